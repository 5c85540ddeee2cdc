import Foundation
import Synchronization
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The real `tally serve` process (the binary next to the test bundle), for tests that kill it,
/// restart it or read its log. It listens on one free port for its whole life, so clients keep
/// their URL across restarts; stdout and stderr of every run are appended to `logURL`.
public final class ServerProcess: Sendable {
    public let port: Int
    public let logURL: URL
    public let databaseURL: String
    public let gatewaySecret: String
    private let arguments: [String]
    private let environment: [String: String]
    private let running = Mutex<Process?>(nil)

    /// - Parameters:
    ///   - arguments: extra `tally serve` flags (e.g. `["--log-level", "debug"]`).
    ///   - environment: extra environment variables of the server.
    public init(databaseURL: String, gatewaySecret: String, arguments: [String] = [], environment: [String: String] = [:]) throws {
        self.databaseURL = databaseURL
        self.gatewaySecret = gatewaySecret
        self.arguments = arguments
        self.environment = environment
        port = try Self.freePort()
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent("tally-serve-\(getpid())-\(port).log")
        FileManager.default.createFile(atPath: logURL.path, contents: nil)
    }

    /// `http://127.0.0.1:PORT`.
    public var baseURL: URL { URL(string: "http://127.0.0.1:\(port)")! }

    /// The process id of the running server, nil when it is not running.
    public var pid: Int32? { running.withLock { $0.map(\.processIdentifier) } }

    /// Starts the server and waits until `/readyz` answers 200 (at most `timeout`).
    public func start(timeout: Duration = .seconds(60)) async throws {
        let process = Process()
        process.executableURL = TallyBinary.url
        process.arguments = ["serve", "--host", "127.0.0.1", "--port", String(port), "--database-url", databaseURL,
                             "--gateway-secret", gatewaySecret] + arguments
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "DATABASE_URL")
        environment.merge(self.environment) { $1 }
        process.environment = environment
        let log = try FileHandle(forWritingTo: logURL)
        try log.seekToEnd()
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try log.close()
        running.withLock { $0 = process }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            guard process.isRunning else {
                throw TestClusterError(message: "tally serve exited with \(process.terminationStatus); log: \(logURL.path)")
            }
            if let (status, _) = try? await HTTP.send("GET", baseURL.appendingPathComponent("readyz"), timeout: 2), status == 200 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestClusterError(message: "tally serve did not become ready within \(timeout); log: \(logURL.path)")
    }

    /// `kill -9`: no graceful shutdown, no flushing. Returns once the process is gone.
    public func kill9() async {
        await signal(SIGKILL)
    }

    /// SIGTERM (graceful shutdown) and wait for the exit.
    public func stop() async {
        await signal(SIGTERM)
    }

    private func signal(_ number: Int32) async {
        guard let process = running.withLock({ current -> Process? in defer { current = nil }; return current }) else { return }
        kill(process.processIdentifier, number)
        while process.isRunning { try? await Task.sleep(for: .milliseconds(5)) }
    }

    /// The server's log so far (every run).
    public func log() throws -> String {
        String(decoding: try Data(contentsOf: logURL), as: UTF8.self)
    }

    /// A TCP port nobody listens on right now (bound once by the kernel's choice, then released;
    /// the server binds it with SO_REUSEADDR).
    public static func freePort() throws -> Int {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { throw TestClusterError(message: "socket() failed: errno \(errno)") }
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let result = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                bind(socket, address, length) == 0 ? getsockname(socket, address, &length) : -1
            }
        }
        guard result == 0 else { throw TestClusterError(message: "bind/getsockname failed: errno \(errno)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// Minimal HTTP calls over URLSession for tests that talk to a server process.
public enum HTTP {
    /// A session without caches or cookies; requests time out after `timeout` seconds.
    private static let session: URLSession = {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpMaximumConnectionsPerHost = 16
        return URLSession(configuration: configuration)
    }()

    /// Sends a request; returns the status and body. Throws on connection errors and timeouts.
    public static func send(_ method: String, _ url: URL, headers: [String: String] = [:], body: Data? = nil,
                            timeout: TimeInterval = 120) async throws -> (status: Int, body: Data) {
        var request = URLRequest(url: url, timeoutInterval: timeout)
        request.httpMethod = method
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        request.httpBody = body
        let (data, response) = try await session.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, data)
    }
}
