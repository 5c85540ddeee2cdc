import Foundation

/// Runs a program to completion, for tests that drive real command-line tools.
public enum ChildProcess {
    public struct Outcome: Sendable {
        public let status: Int32
        public let output: String
        /// Standard error, when asked for (else empty).
        public let errors: String
    }

    /// Runs `executable arguments…` with `environment` added to this process's, feeding it `input`;
    /// returns its exit status, standard output and (with `captureErrors`) standard error.
    public static func run(
        _ executable: URL, _ arguments: [String], environment extra: [String: String] = [:],
        input: Data? = nil, captureErrors: Bool = false
    ) throws -> Outcome {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(extra) { _, new in new }
        let output = Pipe()
        process.standardOutput = output
        // Standard error goes to a file: two pipes read one after the other could deadlock.
        let errorsURL = FileManager.default.temporaryDirectory
            .appendingPathComponent("tally-child-\(UUID().uuidString).err")
        if captureErrors {
            _ = FileManager.default.createFile(atPath: errorsURL.path, contents: nil)
            process.standardError = try FileHandle(forWritingTo: errorsURL)
        } else {
            process.standardError = FileHandle.nullDevice
        }
        defer { try? FileManager.default.removeItem(at: errorsURL) }
        let stdin = Pipe()
        if input != nil { process.standardInput = stdin }
        try process.run()
        if let input {
            stdin.fileHandleForWriting.write(input)
            try stdin.fileHandleForWriting.close()
        }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let errors = captureErrors ? (try? String(contentsOf: errorsURL, encoding: .utf8)) ?? "" : ""
        return Outcome(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self), errors: errors)
    }
}
