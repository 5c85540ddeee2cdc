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

    init(path: String?) throws {
        guard let path, path != "-" else {
            (handle, file, staging) = (FileHandle.standardOutput, nil, nil)
            return
        }
        var status = stat()
        if stat(path, &status) == 0, status.st_mode & S_IFMT != S_IFREG {
            let descriptor = open(path, O_WRONLY)
            guard descriptor >= 0 else { throw ValidationError("cannot write \(path)") }
            (handle, file, staging) = (FileHandle(fileDescriptor: descriptor, closeOnDealloc: true), nil, nil)
            return
        }
        let staging = path + ".partial"
        let descriptor = open(staging, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard descriptor >= 0 else { throw ValidationError("cannot write \(staging) (beside \(path))") }
        (handle, file, self.staging) = (FileHandle(fileDescriptor: descriptor, closeOnDealloc: true), path, staging)
    }

    /// Makes the written bytes durable and puts the file in place.
    func commit() throws {
        guard let staging, let file else { return }
        guard fsync(handle.fileDescriptor) == 0, rename(staging, file) == 0 else {
            throw ValidationError("cannot put the output in place at \(file): errno \(errno)")
        }
    }

    /// Removes what a failed run wrote.
    func discard() {
        if let staging { unlink(staging) }
    }
}
