import ArgumentParser
import Foundation

/// A command's `--out` (an export, generated log lines), written whole or not at all: into a file
/// beside it that is renamed over it once complete, so a failed or killed run (an export's month
/// whose rows are gone, a lost connection) leaves what was there, never an empty or partial file
/// under the name. Standard output (`-`, or no path) and devices such as /dev/null are written
/// directly.
struct OutputFile {
    let handle: FileHandle
    /// The regular file it writes, nil for standard output or a device.
    let file: String?
    private let staging: String?
    /// What error messages call it: the path, or standard output.
    private let shownName: String

    init(path: String?) throws {
        guard let path, path != "-" else {
            (handle, file, staging, shownName) = (FileHandle.standardOutput, nil, nil, "standard output")
            return
        }
        shownName = path
        var status = stat()
        if stat(path, &status) == 0, status.st_mode & S_IFMT != S_IFREG {
            let descriptor = open(path, O_WRONLY)
            guard descriptor >= 0 else { throw ValidationError("cannot write \(path)") }
            (handle, file, staging) = (FileHandle(fileDescriptor: descriptor, closeOnDealloc: true), nil, nil)
            return
        }
        let staging = path + ".partial"
        let descriptor = Self.createAnew(staging)
        guard descriptor >= 0 else {
            throw ValidationError("cannot write \(staging) (beside \(path)): \(String(cString: strerror(errno)))")
        }
        (handle, file, self.staging) = (FileHandle(fileDescriptor: descriptor, closeOnDealloc: true), path, staging)
    }

    /// Creates `path` as a new file only the caller may read (0600: exports carry every
    /// request's address and each user's spending). Never opens what is already there: a link
    /// planted at the name in a shared directory such as /tmp would have had the caller (often
    /// root) truncate its target. A leftover of a killed run is removed first, which in a sticky
    /// directory works only for one's own.
    private static func createAnew(_ path: String) -> Int32 {
        for _ in 0..<3 {
            let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if descriptor >= 0 || errno != EEXIST { return descriptor }
            guard unlink(path) == 0 else { return -1 }
        }
        errno = EEXIST
        return -1
    }

    /// Writes `bytes`, or says why it could not (a full disk, a quota): `FileHandle.write(_:)`
    /// traps on an error instead (found by a review of the exports), which left a partial file
    /// and a crash where a message belongs.
    func write(_ bytes: some DataProtocol) throws {
        do {
            try handle.write(contentsOf: bytes)
        } catch {
            throw OutputFailed(description: "cannot write \(shownName): \(error.localizedDescription)")
        }
    }

    /// Makes the written bytes durable and puts the file in place.
    func commit() throws {
        guard let staging, let file else { return }
        guard fsync(handle.fileDescriptor) == 0, rename(staging, file) == 0 else {
            throw OutputFailed(
                description: "cannot put the output in place at \(file): \(String(cString: strerror(errno)))")
        }
    }

    /// Removes what a failed run wrote.
    func discard() {
        if let staging { unlink(staging) }
    }
}

/// Writing the output failed after the command had started (a full disk): exit 1 with why, not
/// the usage text of a mistyped command.
struct OutputFailed: Error, CustomStringConvertible {
    let description: String
}
