import ArgumentParser
import Foundation
import Synchronization
import TallyCore

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load generators for ops/bench (run `ops/bench --help` for the full benchmarks).",
        subcommands: [BenchAuthorize.self, BenchIngest.self])
}

/// `tally bench authorize`: keep-alive HTTP clients that authorize as fast as they can, while
/// a settler posts the matching log lines in batches, as a gateway does.
struct BenchAuthorize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "authorize",
        abstract: "Authorize + settle load against a running tally serve; prints authorizations/s and latency.",
        discussion: """
            Each client thread holds one keep-alive connection and sends POST /gateway/v1/authorize for a \
            random synthetic user (keys of `tally logs seed`), always user 1 with --hot, or always user \
            --users + 1 with --spent (ops/bench seeds it with a zero balance: every answer a refusal). Every granted hold \
            is settled by a log line with the same request id; four settler connections post them to \
            /gateway/v1/logs every 100 ms, at most 10,000 lines a batch. Prints one line of JSON: \
            authorizations/s, p50/p99/max latency (µs), answers by status, lines settled (in all, and while the \
            clients ran: a settler that falls behind spares the database), and with --server-pid the cores the \
            server used (from /proc) next to the cores the whole machine used. With --warm-up, every one of \
            the --users accounts is first authorized once (and settled before the clock starts), not \
            counted: the figure is then the steady state, where a 10-second run on 10k accounts without it \
            is mostly first touches (cold keys).
            """)

    @Option(help: "Base URL of the server.") var url = "http://127.0.0.1:8080"
    @Option(help: "Gateway secret.") var secret: String
    @Option(help: "Concurrent keep-alive clients.") var clients = 16
    @Option(help: "Seconds to run.") var seconds = 30.0
    @Option(help: "Synthetic users to spread over (1…N).") var users = 10_000
    @Flag(help: "Every request on synthetic user 1 (one hot account).") var hot = false
    @Flag(help: "Every request on synthetic user --users + 1, seeded with a zero balance (every answer a refusal).")
    var spent = false
    @Flag(help: "First authorize each of the --users accounts once, not counted: measure the steady state.")
    var warmUp = false
    @Option(help: "Model to authorize.") var model = "gpt-4o"
    @Flag(help: "Instead of authorizing, GET /healthz: the ceiling of this HTTP stack and client on this machine.")
    var ceiling = false
    @Option(help: "Process id of the server, to report the CPU it used (Linux /proc).") var serverPid: Int32?

    func validate() throws {
        guard !(hot && spent) else { throw ValidationError("--hot and --spent name different accounts: pick one") }
        guard clients >= 1, users >= 1, seconds > 0 else {
            throw ValidationError("--clients and --users must be at least 1, --seconds above 0")
        }
    }

    func run() throws {
        guard let endpoint = HTTPEndpoint(url) else { throw ValidationError("--url must be http://host:port") }
        let run = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        let shared = BenchShared()
        let warmedUp = warmUp && !ceiling ? touchEveryAccount(run: run, endpoint: endpoint, shared: shared) : 0
        let deadline = Date().addingTimeInterval(seconds)
        let group = DispatchGroup()
        let cpuBefore = CPUTimes(serverPID: serverPid)
        let started = Date()
        let stopAt = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
        for client in 0..<clients {
            group.enter()
            Thread.detachNewThread { [self] in
                defer { group.leave() }
                var generator = SystemRandomNumberGenerator()
                let result = drive(client: client, label: run, endpoint: endpoint, shared: shared) {
                    guard DispatchTime.now().uptimeNanoseconds < stopAt else { return nil }
                    if spent { return users + 1 }
                    return hot ? 1 : Int.random(in: 1...users, using: &generator)
                }
                shared.results.withLock { $0.append(result) }
            }
        }
        // Several settlers, as several gateway instances post their logs.
        let settlers = DispatchGroup()
        for _ in 0..<Self.settlers {
            settlers.enter()
            Thread.detachNewThread { [self] in
                settle(endpoint: endpoint, shared: shared, until: deadline)
                settlers.leave()
            }
        }
        group.wait()
        let elapsed = Date().timeIntervalSince(started)
        let cpu = CPUTimes(serverPID: serverPid).cores(since: cpuBefore, seconds: elapsed)
        settlers.wait()
        let all = shared.results.withLock { $0 }
        var latencies = all.flatMap(\.latencies)
        latencies.sort()
        func percentile(_ p: Double) -> UInt32 {
            latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]
        }
        var statuses: [Int: Int] = [:]
        for result in all { statuses.merge(result.statuses, uniquingKeysWith: +) }
        let granted = statuses[200] ?? 0
        let summary: [String: Any] = [
            "authorizations": latencies.count, "granted": granted, "seconds": elapsed,
            "per_second": Double(latencies.count) / elapsed, "p50_us": percentile(0.5), "p99_us": percentile(0.99),
            "max_us": latencies.last ?? 0,
            "statuses": Dictionary(uniqueKeysWithValues: statuses.map { (String($0.key), $0.value) }),
            "settled": shared.settled.load(ordering: .relaxed), "errors": all.reduce(0) { $0 + $1.errors },
            "settled_in_time": shared.settledInTime.load(ordering: .relaxed),
            "server_cores": cpu.server ?? -1, "machine_cores": cpu.machine,
            "cores": ProcessInfo.processInfo.activeProcessorCount, "warm_up_authorizations": warmedUp,
        ]
        let json = try JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys])
        print(String(decoding: json, as: UTF8.self))
    }

    /// The warm-up pass: the clients authorize each account once between them (user 1 only with
    /// --hot), their log lines posted before it returns; nothing of it is counted. Returns how many it sent.
    private func touchEveryAccount(run: String, endpoint: HTTPEndpoint, shared: BenchShared) -> Int {
        let accounts = hot ? 1 : users, group = DispatchGroup()
        for client in 0..<clients {
            group.enter()
            Thread.detachNewThread { [self] in
                defer { group.leave() }
                var next = stride(from: client + 1, through: accounts, by: clients).makeIterator()
                let result = drive(client: client, label: "\(run)w", endpoint: endpoint, shared: shared) { next.next() }
                shared.warmedUp.add(result.latencies.count, ordering: .relaxed)
            }
        }
        group.wait()
        // Settled before the clock starts, so that the burst of their log lines is not measured.
        var connection: HTTPConnection?
        postSettlements(endpoint: endpoint, shared: shared, connection: &connection)
        return shared.warmedUp.load(ordering: .relaxed)
    }

    /// What the client threads and the settler share.
    final class BenchShared: Sendable {
        /// NDJSON of granted holds' log lines, and how many lines.
        let settlements = Mutex<(lines: [UInt8], count: Int)>(([], 0))
        let results = Mutex<[ClientResult]>([])
        let settled = Atomic<Int>(0)
        let settledInTime = Atomic<Int>(0)
        /// Authorizations of the warm-up pass (not counted).
        let warmedUp = Atomic<Int>(0)
    }

    struct ClientResult: Sendable {
        var latencies: [UInt32] = []
        var statuses: [Int: Int] = [:]
        var errors = 0
    }

    /// One client: a keep-alive connection, requests built from bytes (no string formatting in
    /// the loop, so the client's own cost stays small next to the server's on a shared machine),
    /// one for each user `nextUser` gives until it gives nil. Request ids start with `label`.
    private func drive(
        client: Int, label: String, endpoint: HTTPEndpoint, shared: BenchShared,
        nextUser: () -> Int?
    ) -> ClientResult {
        var result = ClientResult()
        result.latencies.reserveCapacity(600_000)
        var connection: HTTPConnection?
        let head = Array(
            "POST /gateway/v1/authorize HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer \(secret)\r\nContent-Type: application/json\r\nContent-Length: "
                .utf8)
        let healthz = Array("GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n".utf8)
        let idPrefix = Array(#"{"request_id":"bench-\#(label)-\#(client)-"#.utf8)
        let keyField = Array(#"","key":""#.utf8)
        let bodyTail = Array(#"","model":"\#(model)","estimate":{"prompt_tokens":1000,"max_tokens":500}}"#.utf8)
        let lineTail = Array(
            #"","model":"\#(model)","kind":"chat","status":200,"usage":{"prompt_tokens":1000,"completion_tokens":300}}"#
                .utf8)
        var clock = SettlementClock()
        var body: [UInt8] = [], request: [UInt8] = [], pending: [UInt8] = []
        var pendingCount = 0, sequence = 0
        while let user = nextUser() {
            sequence += 1
            body.removeAll(keepingCapacity: true)
            body += idPrefix
            ASCII.append(sequence, to: &body)
            let idEnd = body.count
            body += keyField
            let keyStart = body.count
            SyntheticKeys.appendKey(forUser: user, to: &body)
            let keyEnd = body.count
            body += bodyTail
            request.removeAll(keepingCapacity: true)
            request += head
            ASCII.append(body.count, to: &request)
            request += [13, 10, 13, 10]
            request += body
            let start = DispatchTime.now().uptimeNanoseconds
            do {
                if connection == nil { connection = try HTTPConnection(endpoint) }
                let status = try connection!.exchange(ceiling ? healthz : request)
                result.latencies.append(
                    UInt32(min(UInt64(UInt32.max), (DispatchTime.now().uptimeNanoseconds - start) / 1000)))
                result.statuses[status, default: 0] += 1
                guard status == 200, !ceiling else { continue }
                // {"request_id":"…","created_at":"…","key":"…","model":…}
                pending += body[..<idEnd]
                pending += clock.createdAtField()
                pending += keyField
                pending += body[keyStart..<keyEnd]
                pending += lineTail
                pending.append(10)
                pendingCount += 1
                if pendingCount >= 64 {
                    shared.settlements.withLock {
                        $0.lines += pending; $0.count += pendingCount
                    }
                    pending.removeAll(keepingCapacity: true)
                    pendingCount = 0
                }
            } catch {
                result.errors += 1
                connection = nil
            }
        }
        shared.settlements.withLock {
            $0.lines += pending; $0.count += pendingCount
        }
        return result
    }

    /// Posts granted holds' log lines every 100 ms (one of `settlers`), then the rest after the deadline.
    /// Lines per POST at most, as a gateway batches them (well under the ingest limit).
    static let linesPerPost = 10_000
    /// Connections posting log lines at once.
    static let settlers = 4

    private func settle(endpoint: HTTPEndpoint, shared: BenchShared, until deadline: Date) {
        var connection: HTTPConnection?
        var finalRound = false
        while true {
            if Date() >= deadline.addingTimeInterval(0.5) { finalRound = true }
            postSettlements(endpoint: endpoint, shared: shared, connection: &connection)
            // What was settled while the clients ran: a settler that falls behind spares the
            // database, so the figure says how far it kept up.
            if Date() < deadline {
                shared.settledInTime.store(shared.settled.load(ordering: .relaxed), ordering: .relaxed)
            }
            if finalRound { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    /// Posts the log lines of the holds granted so far.
    private func postSettlements(endpoint: HTTPEndpoint, shared: BenchShared, connection: inout HTTPConnection?) {
        let head =
            "POST /gateway/v1/logs HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer \(secret)\r\n"
            + "Content-Type: application/x-ndjson\r\nContent-Length: "
        let (lines, _) = shared.settlements.withLock { batch in
            defer { batch = ([], 0) }; return batch
        }
        for (chunk, count) in Self.chunks(lines, linesEach: Self.linesPerPost) {
            do {
                if connection == nil { connection = try HTTPConnection(endpoint) }
                if try connection!.exchange(Array("\(head)\(chunk.count)\r\n\r\n".utf8) + chunk) == 200 {
                    shared.settled.add(count, ordering: .relaxed)
                }
            } catch {
                connection = nil
            }
        }
    }

    /// NDJSON `lines` cut into pieces of at most `linesEach` lines, with their line counts.
    static func chunks(_ lines: [UInt8], linesEach: Int) -> [(ArraySlice<UInt8>, Int)] {
        var chunks: [(ArraySlice<UInt8>, Int)] = []
        var start = 0, count = 0
        for index in lines.indices where lines[index] == 10 {
            count += 1
            if count == linesEach {
                chunks.append((lines[start...index], count))
                start = index + 1
                count = 0
            }
        }
        if count > 0 { chunks.append((lines[start...], count)) }
        return chunks
    }

    /// `"created_at":"<now, to the second>",` for log lines, rebuilt once a second.
    struct SettlementClock {
        private var second = 0
        private var field: [UInt8] = []

        mutating func createdAtField() -> [UInt8] {
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            if now.tv_sec != second || field.isEmpty {
                second = now.tv_sec
                field = Array(#"","created_at":"\#(BenchAuthorize.timestamp())"#.utf8)
            }
            return field
        }
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var time = now.tv_sec
        var parts = tm()
        gmtime_r(&time, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return
            "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}

/// CPU time used so far (Linux `/proc`): by one process, and by the whole machine, in seconds.
struct CPUTimes {
    let server: Double?
    let machine: Double

    init(serverPID: Int32?) {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        server = serverPID.flatMap { pid -> Double? in
            // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
            return (user + system) / ticks
        }
        // /proc/stat's first line: user nice system idle iowait irq softirq steal (then guest times, which
        // user and nice include already); busy is all of them but idle and iowait.
        let total = (try? String(contentsOfFile: "/proc/stat", encoding: .utf8))?.split(separator: "\n").first
        let values = Array(total?.split(separator: " ").dropFirst().compactMap { Double($0) }.prefix(8) ?? [])
        machine = values.count > 4 ? (values.reduce(0, +) - values[3] - values[4]) / ticks : 0
    }

    /// Cores used on average between `earlier` and now (`seconds` apart).
    func cores(since earlier: CPUTimes, seconds: Double) -> (server: Double?, machine: Double) {
        let server = self.server.flatMap { now in earlier.server.map { (now - $0) / seconds } }
        return (server, (machine - earlier.machine) / seconds)
    }
}

/// Host and port of an `http://` URL.
struct HTTPEndpoint {
    let host: String
    let port: UInt16

    init?(_ url: String) {
        guard let components = URLComponents(string: url), components.scheme == "http", let host = components.host
        else { return nil }
        self.host = host
        port = UInt16(components.port ?? 80)
    }
}

/// A minimal blocking HTTP/1.1 keep-alive client: enough for a load generator, where a
/// general client's overhead would be measured instead of the server.
final class HTTPConnection {
    private let socket: Int32
    /// Received bytes; `inbox[unread..<received]` is not consumed yet.
    private var inbox = [UInt8](repeating: 0, count: 1 << 16)
    private var unread = 0
    private var received = 0

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
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            close(socket)
            throw BenchError.io("connect")
        }
    }

    deinit { close(socket) }

    /// Sends one whole request and reads the whole answer; returns its status.
    func exchange(_ request: [UInt8]) throws -> Int {
        var sent = 0
        while sent < request.count {
            let written = request.withUnsafeBytes {
                send(socket, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL))
            }
            guard written > 0 else { throw BenchError.io("send") }
            sent += written
        }
        return try readResponse()
    }

    private func readResponse() throws -> Int {
        var scanned = 0  // offsets from `unread`: `fill` may move the bytes
        var headerLength = -1
        while headerLength < 0 {
            while unread + scanned + 3 < received {
                let at = unread + scanned
                if inbox[at] == 13, inbox[at + 1] == 10, inbox[at + 2] == 13, inbox[at + 3] == 10 {
                    headerLength = scanned + 4
                    break
                }
                scanned += 1
            }
            if headerLength < 0 { try fill() }
        }
        guard headerLength > 12 else { throw BenchError.io("bad status line") }
        let status = (0..<3).reduce(0) { $0 * 10 + Int(inbox[unread + 9 + $1]) - 48 }
        let length = contentLength(headerLength)
        while received - unread < headerLength + length { try fill() }
        unread += headerLength + length
        if unread == received { unread = 0; received = 0 }
        return status
    }

    /// The `Content-Length` of the head `inbox[unread..<unread + headerLength]` (0 when absent).
    private func contentLength(_ headerLength: Int) -> Int {
        let name = Array("\r\ncontent-length:".utf8)
        var at = unread
        let end = unread + headerLength - name.count
        while at < end {
            if (0..<name.count).allSatisfy({ inbox[at + $0] | 0x20 == name[$0] | 0x20 }) {
                var index = at + name.count, value = 0
                while inbox[index] == 32 { index += 1 }
                while inbox[index] >= 48, inbox[index] <= 57 { value = value * 10 + Int(inbox[index]) - 48; index += 1 }
                return value
            }
            at += 1
        }
        return 0
    }

    /// Receives more bytes, first moving the unread ones to the front (or growing the buffer).
    private func fill() throws {
        if received == inbox.count {
            if unread > 0 {
                inbox.replaceSubrange(0..<(received - unread), with: inbox[unread..<received])
                received -= unread
                unread = 0
            } else {
                inbox += [UInt8](repeating: 0, count: inbox.count)
            }
        }
        let count = inbox.withUnsafeMutableBytes { recv(socket, $0.baseAddress! + received, $0.count - received, 0) }
        guard count > 0 else { throw BenchError.io("connection closed") }
        received += count
    }
}

/// Decimal digits of a non-negative integer, appended as bytes.
enum ASCII {
    static func append(_ value: Int, to bytes: inout [UInt8]) {
        if value >= 10 { append(value / 10, to: &bytes) }
        bytes.append(UInt8(48 + value % 10))
    }
}

enum BenchError: Error {
    case io(String)
}
