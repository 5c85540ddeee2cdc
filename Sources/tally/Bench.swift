import ArgumentParser
import Foundation
import Synchronization
import TallyCore

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load generators for ops/bench (run `ops/bench --help` for the full benchmarks).",
        subcommands: [BenchAuthorize.self])
}

/// `tally bench authorize`: keep-alive HTTP clients that authorize as fast as they can, while
/// a settler posts the matching log lines in batches, as a gateway does.
struct BenchAuthorize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "authorize",
        abstract: "Authorize + settle load against a running tally serve; prints authorizations/s and latency.",
        discussion: """
            Each client thread holds one keep-alive connection and sends POST /gateway/v1/authorize for a \
            random synthetic user (keys of `tally logs seed`), or always user 1 with --hot. Every granted hold \
            is settled by a log line with the same request id; a settler thread posts them to /gateway/v1/logs \
            in batches every 100 ms. Prints one line of JSON: authorizations/s, p50/p99/max latency (µs), \
            answers by status, lines settled.
            """)

    @Option(help: "Base URL of the server.") var url = "http://127.0.0.1:8080"
    @Option(help: "Gateway secret.") var secret: String
    @Option(help: "Concurrent keep-alive clients.") var clients = 16
    @Option(help: "Seconds to run.") var seconds = 30.0
    @Option(help: "Synthetic users to spread over (1…N).") var users = 10_000
    @Flag(help: "Every request on synthetic user 1 (one hot account).") var hot = false
    @Option(help: "Model to authorize.") var model = "gpt-4o"
    @Flag(help: "Instead of authorizing, GET /healthz: the ceiling of this HTTP stack and client on this machine.")
    var ceiling = false

    func run() throws {
        guard let endpoint = HTTPEndpoint(url) else { throw ValidationError("--url must be http://host:port") }
        let run = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let shared = BenchShared()
        let deadline = Date().addingTimeInterval(seconds)
        let group = DispatchGroup()
        let started = Date()
        for client in 0..<clients {
            group.enter()
            Thread.detachNewThread { [self] in
                defer { group.leave() }
                let result = drive(client: client, run: run, endpoint: endpoint, until: deadline, shared: shared)
                shared.results.withLock { $0.append(result) }
            }
        }
        let settlerDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread { [self] in
            settle(endpoint: endpoint, shared: shared, until: deadline)
            settlerDone.signal()
        }
        group.wait()
        let elapsed = Date().timeIntervalSince(started)
        settlerDone.wait()
        let all = shared.results.withLock { $0 }
        var latencies = all.flatMap(\.latencies)
        latencies.sort()
        func percentile(_ p: Double) -> UInt32 { latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] }
        var statuses: [Int: Int] = [:]
        for result in all { statuses.merge(result.statuses, uniquingKeysWith: +) }
        let granted = statuses[200] ?? 0
        let summary: [String: Any] = [
            "authorizations": latencies.count, "granted": granted, "seconds": elapsed,
            "per_second": Double(latencies.count) / elapsed, "p50_us": percentile(0.5), "p99_us": percentile(0.99),
            "max_us": latencies.last ?? 0, "statuses": Dictionary(uniqueKeysWithValues: statuses.map { (String($0.key), $0.value) }),
            "settled": shared.settled.load(ordering: .relaxed), "errors": all.reduce(0) { $0 + $1.errors },
        ]
        let json = try JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys])
        print(String(decoding: json, as: UTF8.self))
    }

    /// What the client threads and the settler share.
    final class BenchShared: Sendable {
        let settlements = Mutex<[String]>([])
        let results = Mutex<[ClientResult]>([])
        let settled = Atomic<Int>(0)
    }

    struct ClientResult: Sendable {
        var latencies: [UInt32] = []
        var statuses: [Int: Int] = [:]
        var errors = 0
    }

    private func drive(client: Int, run: String, endpoint: HTTPEndpoint, until deadline: Date, shared: BenchShared) -> ClientResult {
        var result = ClientResult()
        result.latencies.reserveCapacity(600_000)
        var generator = SystemRandomNumberGenerator()
        var connection: HTTPConnection?
        var sequence = 0
        var pending: [String] = []
        while Date() < deadline {
            sequence += 1
            let user = hot ? 1 : Int.random(in: 1...users, using: &generator)
            let requestID = "bench-\(run)-\(client)-\(sequence)"
            let key = SyntheticKeys.key(forUser: user)
            let body = #"{"request_id":"\#(requestID)","key":"\#(key)","model":"\#(model)","estimate":{"prompt_tokens":1000,"max_tokens":500}}"#
            let start = DispatchTime.now().uptimeNanoseconds
            do {
                if connection == nil { connection = try HTTPConnection(endpoint) }
                let status = ceiling ? try connection!.get("/healthz")
                    : try connection!.post("/gateway/v1/authorize", body: body, secret: secret)
                result.latencies.append(UInt32(min(UInt64(UInt32.max), (DispatchTime.now().uptimeNanoseconds - start) / 1000)))
                result.statuses[status, default: 0] += 1
                if status == 200, !ceiling {
                    pending.append(#"{"request_id":"\#(requestID)","created_at":"\#(Self.timestamp())","key":"\#(key)","model":"\#(model)","kind":"chat","status":200,"usage":{"prompt_tokens":1000,"completion_tokens":300}}"#)
                    if pending.count >= 64 {
                        shared.settlements.withLock { $0 += pending }
                        pending.removeAll(keepingCapacity: true)
                    }
                }
            } catch {
                result.errors += 1
                connection = nil
            }
        }
        shared.settlements.withLock { $0 += pending }
        return result
    }

    /// Posts the granted holds' log lines every 100 ms, then the rest after the deadline.
    private func settle(endpoint: HTTPEndpoint, shared: BenchShared, until deadline: Date) {
        var connection: HTTPConnection?
        var finalRound = false
        while true {
            if Date() >= deadline.addingTimeInterval(0.5) { finalRound = true }
            let lines = shared.settlements.withLock { lines in defer { lines.removeAll(keepingCapacity: true) }; return lines }
            for start in stride(from: 0, to: lines.count, by: 20_000) {
                let chunk = lines[start..<min(start + 20_000, lines.count)]
                do {
                    if connection == nil { connection = try HTTPConnection(endpoint) }
                    if try connection!.post("/gateway/v1/logs", body: chunk.joined(separator: "\n"), secret: secret) == 200 {
                        shared.settled.add(chunk.count, ordering: .relaxed)
                    }
                } catch {
                    connection = nil
                }
            }
            if finalRound { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var time = now.tv_sec
        var parts = tm()
        gmtime_r(&time, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}

/// Host and port of an `http://` URL.
struct HTTPEndpoint {
    let host: String
    let port: UInt16

    init?(_ url: String) {
        guard let components = URLComponents(string: url), components.scheme == "http", let host = components.host else { return nil }
        self.host = host
        port = UInt16(components.port ?? 80)
    }
}

/// A minimal blocking HTTP/1.1 keep-alive client: enough for a load generator, where a
/// general client's overhead would be measured instead of the server.
final class HTTPConnection {
    private let socket: Int32
    private var buffer = [UInt8](repeating: 0, count: 1 << 16)
    private var pending: [UInt8] = []

    init(_ endpoint: HTTPEndpoint) throws {
        socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { throw BenchError.io("socket") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = endpoint.port.bigEndian
        address.sin_addr.s_addr = inet_addr(endpoint.host == "localhost" ? "127.0.0.1" : endpoint.host)
        var noDelay: Int32 = 1
        setsockopt(socket, Int32(IPPROTO_TCP), TCP_NODELAY, &noDelay, socklen_t(MemoryLayout<Int32>.size))
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(socket)
            throw BenchError.io("connect")
        }
    }

    deinit { close(socket) }

    /// Sends a POST and reads the whole answer; returns its status.
    func post(_ path: String, body: String, secret: String) throws -> Int {
        try exchange("POST \(path) HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer \(secret)\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
    }

    /// Sends a GET and reads the whole answer; returns its status.
    func get(_ path: String) throws -> Int {
        try exchange("GET \(path) HTTP/1.1\r\nHost: tally\r\n\r\n")
    }

    private func exchange(_ request: String) throws -> Int {
        var bytes = Array(request.utf8)
        var sent = 0
        while sent < bytes.count {
            let written = bytes.withUnsafeMutableBytes { send(socket, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { throw BenchError.io("send") }
            sent += written
        }
        return try readResponse()
    }

    private func readResponse() throws -> Int {
        var headerEnd: Int?
        while headerEnd == nil {
            headerEnd = pending.firstRange(of: [13, 10, 13, 10])?.upperBound
            if headerEnd == nil { try fill() }
        }
        let head = String(decoding: pending[..<headerEnd!], as: UTF8.self)
        let statusLine = head.prefix { $0 != "\r" }.split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw BenchError.io("bad status line") }
        let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
            .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
        while pending.count < headerEnd! + length { try fill() }
        pending.removeFirst(headerEnd! + length)
        return status
    }

    private func fill() throws {
        let count = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress!, $0.count, 0) }
        guard count > 0 else { throw BenchError.io("connection closed") }
        pending.append(contentsOf: buffer[0..<count])
    }
}

enum BenchError: Error {
    case io(String)
}
