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
        // `/dev/stdout` (or any name of what standard output already is: a pipe, a redirected
        // file) is standard output: staged beside it, a pipe was refused and a redirected file
        // left empty while the link itself was renamed over (found by a review).
        if Self.isStandardOutput(path) {
            (handle, file, staging) = (FileHandle.standardOutput, nil, nil)
            return
        }
        if let device = try Self.device(at: path) {
            (handle, file, staging) = (FileHandle(fileDescriptor: device, closeOnDealloc: true), nil, nil)
            return
        }
        let staging = path + ".partial"
        let descriptor = Self.createAnew(staging)
        guard descriptor >= 0 else {
            throw ValidationError("cannot write \(staging) (beside \(path)): \(String(cString: strerror(errno)))")
        }
        (handle, file, self.staging) = (FileHandle(fileDescriptor: descriptor, closeOnDealloc: true), path, staging)
    }

    private static func isStandardOutput(_ path: String) -> Bool {
        var named = stat(), output = stat()
        return stat(path, &named) == 0 && fstat(STDOUT_FILENO, &output) == 0 && named.st_dev == output.st_dev
            && named.st_ino == output.st_ino
    }

    /// An open descriptor when `path` names a character device (`/dev/null`, a terminal, root's
    /// `/dev/stdout` link), nil when it names a regular file, a link to one or nothing (the file
    /// is then made anew and renamed over the name, which replaces a link rather than writing
    /// through it). Anything else is refused (found by a review): a FIFO or socket planted at the
    /// name in /tmp would have received a raw export, and a link someone else made to a device
    /// (a disk) would have had it written over.
    private static func device(at path: String) throws -> Int32? {
        var link = stat(), target = stat()
        guard lstat(path, &link) == 0 else { return nil }
        let isLink = link.st_mode & S_IFMT == S_IFLNK
        guard isLink ? stat(path, &target) == 0 : true else { return nil }
        let kind = (isLink ? target : link).st_mode & S_IFMT
        if kind == S_IFREG { return nil }
        guard kind == S_IFCHR, !isLink || link.st_uid == 0 || link.st_uid == getuid() else {
            throw ValidationError(
                "\(path) is not a file or a device to write to (a FIFO, a socket, a directory, or another's link"
                    + " to a device): choose another --out")
        }
        // Non-blocking, and checked once open: swapped for a FIFO meanwhile, it is refused
        // before a byte goes out (nor does the open wait for a reader).
        let descriptor = open(path, O_WRONLY | O_CLOEXEC | O_NONBLOCK | (isLink ? 0 : O_NOFOLLOW))
        guard descriptor >= 0 else {
            throw ValidationError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
        var opened = stat()
        guard fstat(descriptor, &opened) == 0, opened.st_mode & S_IFMT == S_IFCHR else {
            close(descriptor)
            throw ValidationError("\(path) changed while it was opened: choose another --out")
        }
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) & ~O_NONBLOCK)
        return descriptor
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
