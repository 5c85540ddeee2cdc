import Foundation
import Synchronization

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A real `tally serve` child process on a free port, for tests that need several server
/// processes, kill one, restart it or read its log. It keeps its port across restarts, so
/// clients keep their URL; the output of every run is appended to `logURL`.
public final class ServerProcess: @unchecked Sendable {
    public let port: Int
    public let logURL: URL
    public let databaseURL: String
    public let gatewaySecret: String
    private let arguments: [String]
    private let environment: [String: String]
    private let current = Mutex<Process?>(nil)

    /// Starts the server against `databaseURL` and returns once `/readyz` answers 200.
    /// `arguments` are extra `tally serve` flags (e.g. `["--log-level", "trace"]`).
    public init(
        databaseURL: String, gatewaySecret: String = "test-gateway-secret", arguments: [String] = [],
        environment extra: [String: String] = [:], readyWithin timeout: TimeInterval = 60
    ) throws {
        port = try Self.freePort()
        self.databaseURL = databaseURL
        self.gatewaySecret = gatewaySecret
        self.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        environment["DATABASE_URL"] = databaseURL
        environment["TALLY_GATEWAY_SECRET"] = gatewaySecret
        environment["TALLY_POOL_SIZE"] = environment["TALLY_POOL_SIZE"] ?? "4"
        for (name, value) in extra { environment[name] = value }
        self.environment = environment
        logURL = FileManager.default.temporaryDirectory.appendingPathComponent(
            "tally-serve-\(port)-\(UUID().uuidString).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)  // if it is missing, start() throws
        try start(readyWithin: timeout)
    }

    deinit { stop() }

    public var baseURL: String { "http://127.0.0.1:\(port)" }
    public var isRunning: Bool { current.withLock { $0?.isRunning ?? false } }
    /// The process id of the current (or last) run.
    public var pid: Int32 { current.withLock { $0?.processIdentifier ?? 0 } }

    /// Starts the server (again, on the same port) and returns once `/readyz` answers 200.
    public func start(readyWithin timeout: TimeInterval = 60) throws {
        let process = Process()
        process.executableURL = TallyBinary.url
        process.arguments = ["serve", "--host", "127.0.0.1", "--port", String(port)] + arguments
        process.environment = environment
        let log = try FileHandle(forWritingTo: logURL)
        try log.seekToEnd()
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try log.close()
        current.withLock { $0 = process }
        try waitUntilReady(process, timeout: timeout)
    }

    /// `start` off the concurrency pool, for async tests that keep clients running meanwhile.
    public func restart(readyWithin timeout: TimeInterval = 60) async throws {
        try await offThePool { Result { try self.start(readyWithin: timeout) } }.get()
    }

    /// Sends `signal` (SIGTERM by default) and waits for the process to exit.
    public func stop(signal: Int32 = SIGTERM) {
        guard let process = current.withLock({ $0 }), process.isRunning else { return }
        kill(process.processIdentifier, signal)
        process.waitUntilExit()
    }

    /// `kill -9` (no graceful shutdown, nothing flushed), off the concurrency pool.
    public func kill9() async {
        await offThePool { self.stop(signal: SIGKILL) }
    }

    /// The server's log so far (every run).
    public func log() -> String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    private func waitUntilReady(_ process: Process, timeout: TimeInterval) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            guard process.isRunning else {
                throw ServerProcessError(message: "tally serve exited: \(log().suffix(2000))")
            }
            if let answer = try? HTTP.send("GET", "\(baseURL)/readyz", timeout: 2), answer.status == 200 { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        stop(signal: SIGKILL)
        throw ServerProcessError(message: "tally serve was not ready within \(Int(timeout)) s: \(log().suffix(2000))")
    }

    /// A port the kernel just handed out and released (the server binds it with SO_REUSEADDR).
    static func freePort() throws -> Int {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw ServerProcessError(message: "socket() failed") }
        defer { close(descriptor) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, length) == 0 && getsockname(descriptor, $0, &length) == 0
            }
        }
        guard bound else { throw ServerProcessError(message: "bind() failed") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

public struct ServerProcessError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// A blocking HTTP/1.1 client for tests that talk to server processes.
public enum HTTP {
    public struct Answer: Sendable {
        public let status: Int
        public let body: Data
        public var text: String { String(decoding: body, as: UTF8.self) }
        public var object: [String: Any] { ((try? JSONSerialization.jsonObject(with: body)) as? [String: Any]) ?? [:] }
    }

    private static let session: URLSession = {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpMaximumConnectionsPerHost = 64
        return URLSession(configuration: configuration)
    }()

    /// Sends one request and waits for the answer.
    public static func send(
        _ method: String, _ url: String, headers: [String: String] = [:], body: Data? = nil,
        timeout: TimeInterval = 30
    ) throws -> Answer {
        let request = request(method, url, headers: headers, body: body, timeout: timeout)
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: Result<Answer, any Error> = .failure(ServerProcessError(message: "no answer"))
        session.dataTask(with: request) { data, response, error in
            if let error {
                result = .failure(error)
            } else {
                result = .success(Answer(status: (response as? HTTPURLResponse)?.statusCode ?? 0, body: data ?? Data()))
            }
            done.signal()
        }.resume()
        done.wait()
        return try result.get()
    }

    /// `send` for async code.
    public static func sendAsync(
        _ method: String, _ url: String, headers: [String: String] = [:], body: Data? = nil,
        timeout: TimeInterval = 30
    ) async throws -> Answer {
        let (data, response) = try await session.data(
            for: request(method, url, headers: headers, body: body, timeout: timeout))
        return Answer(status: (response as? HTTPURLResponse)?.statusCode ?? 0, body: data)
    }

    private static func request(
        _ method: String, _ url: String, headers: [String: String], body: Data?,
        timeout: TimeInterval
    ) -> URLRequest {
        var request = URLRequest(url: URL(string: url)!, timeoutInterval: timeout)
        request.httpMethod = method
        request.httpBody = body
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        return request
    }
}
