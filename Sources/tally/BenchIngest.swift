import ArgumentParser
import Foundation
import Synchronization
import TallyCore
import TallyPostgres

/// `tally bench ingest`: the client sweep of `ops/bench ingest` against a running server, with
/// both baselines measured in the same run on the same database: the raw COPY of the very rows
/// Tally stored into an identical table, and the peers' per-request transaction (pgbench).
/// Needs nothing but this binary, the server and pgbench, so the bench kit runs it as it is.
struct BenchIngest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Ingest sweep against a running tally serve, next to raw COPY and per-request baselines.",
        discussion: """
            For each client count: --lines generated gateway lines (10,000 zipf users by default, keys of \
            `tally logs seed`) POSTed to /gateway/v1/logs in --batch-line batches by that many keep-alive \
            clients; then, once the settler has folded them, the same rows (copied out of request_logs) COPYed \
            by as many connections into an identical table. Prints lines/s and rows/s, WAL bytes per line of \
            both (pg_current_wal_lsn before and after, the fold included), the cores the whole machine used and \
            its CPU microseconds per line and per raw COPY row (from /proc/stat), the server's CPU seconds and \
            peak RSS (with --server-pid), and PostgreSQL's wait events sampled every 20 ms during Tally's ingest. \
            Then the per-request baseline: pgbench, one transaction per request (insert the log row, update \
            the user, update the token) on copies of the tables.
            """)

    @Option(help: "Base URL of the server.") var url = "http://127.0.0.1:8080"
    @Option(help: "Gateway secret.") var secret: String
    @OptionGroup var database: DatabaseOptions
    @Option(help: "Lines per client count.") var lines = 300_000
    @Option(help: "Synthetic users the lines spread over (zipf).") var users = 10_000
    @Option(help: "Lines per batch.") var batch = 10_000
    @Option(help: "Client counts, comma-separated.") var clients = "1,2,4,8"
    @Option(help: "The server's process id, for its CPU time and peak RSS.") var serverPid: Int32?
    @Option(help: "pgbench executable for the per-request baseline; 'none' skips it.") var pgbench = "pgbench"
    @Option(help: "Clients of the per-request baseline.") var pgbenchClients = 64
    @Option(help: "Seconds of the per-request baseline.") var baselineSeconds = 20

    func run() throws {
        guard let endpoint = HTTPEndpoint(url) else { throw ValidationError("--url must be http://host:port") }
        let counts = clients.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !counts.isEmpty, counts.allSatisfy({ $0 > 0 }), lines > 0, batch > 0 else {
            throw ValidationError("--clients, --lines and --batch must be positive")
        }
        let databaseURL = try database.resolvedURL()
        let db = try PostgresConnection(url: databaseURL)
        try IngestBaselines.prepareTables(on: db)
        Self.say(try IngestBaselines.settings(on: db, users: users, batch: batch))
        Self.say(IngestStep.header)
        var steps: [IngestStep] = []
        for (index, count) in counts.enumerated() {
            FileHandle.standardError.write(Data("bench ingest: \(count) client(s), \(lines) lines\n".utf8))
            var step = try ingest(step: index, clients: count, endpoint: endpoint, databaseURL: databaseURL, db: db)
            step.rawCopy = try IngestBaselines.rawCopy(
                afterBatch: step.firstBatch, clients: count, databaseURL: databaseURL, db: db)
            step.peakRSSKiB = serverPid.flatMap { ProcessStats.peakRSSKiB(pid: $0) }
            steps.append(step)
            Self.say(step.row)
        }
        let perRequest =
            pgbench == "none"
            ? nil
            : try IngestBaselines.perRequest(
                pgbench: pgbench, clients: pgbenchClients, seconds: baselineSeconds,
                users: users, databaseURL: databaseURL)
        Self.say(IngestReport(steps: steps, perRequest: perRequest, pgbenchClients: pgbenchClients).text)
    }

    /// Writes a line to standard output at once (print buffers when it is a file or a pipe).
    static func say(_ text: String) {
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }

    /// One client count: Tally's ingest over HTTP, then the wait for the fold.
    private func ingest(step: Int, clients: Int, endpoint: HTTPEndpoint, databaseURL: String, db: PostgresConnection)
        throws -> IngestStep
    {
        let requests = IngestBatches.requests(
            lines: lines, users: users, batch: batch, seed: UInt64(1_000 + step), secret: secret)
        var result = IngestStep(clients: clients, lines: lines)
        result.firstBatch = try db.query("SELECT coalesce(max(id), 0) FROM ingest_batches")[0].decode(0, as: Int64.self)
        let walBefore = try WALMark(db)
        let cpuBefore = CPUTimes(serverPID: serverPid)
        let sampler = try WaitEventSampler(databaseURL: databaseURL)
        let started = DispatchTime.now().uptimeNanoseconds
        result.failures = IngestBatches.post(requests, clients: clients, endpoint: endpoint)
        result.seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        result.machineCPUSeconds = CPUTimes(serverPID: nil).machine - cpuBefore.machine
        result.waits = sampler.stop()
        let lags = try IngestBaselines.waitUntilFolded(db)
        result.balanceFoldSeconds = lags.balances
        result.foldSeconds = lags.all
        (result.walBytes, result.checkpointed) = try WALMark(db).since(walBefore)
        if let cpuBefore = cpuBefore.server, let cpuAfter = CPUTimes(serverPID: serverPid).server {
            result.serverCPUSeconds = cpuAfter - cpuBefore
        }
        result.stored = try db.query("SELECT count(*) FROM request_logs WHERE batch_id > $1", [result.firstBatch])[0]
            .decode(0, as: Int.self)
        return result
    }
}

/// The figures of one client count.
struct IngestStep {
    var clients: Int
    var lines: Int
    var firstBatch: Int64 = 0
    var seconds = 0.0
    /// After the last batch's answer: until every pending charge was folded into balances, and
    /// until the usage was rolled up too (the step is settled).
    var balanceFoldSeconds = 0.0
    var foldSeconds = 0.0
    var stored = 0
    var failures = 0
    var walBytes: Int64 = 0
    /// A checkpoint ran while Tally ingested (or the fold caught up): its full-page images are
    /// in `walBytes`.
    var checkpointed = false
    var serverCPUSeconds: Double?
    /// CPU time of the whole machine (every process: server, PostgreSQL, this client) while the
    /// batches were posted, the fold running beside them included.
    var machineCPUSeconds = 0.0
    var peakRSSKiB: Int?
    var waits: [String: Int] = [:]
    var rawCopy = RawCopy()

    struct RawCopy {
        var rows = 0
        var seconds = 0.0
        var walBytes: Int64 = 0
        var checkpointed = false
        var machineCPUSeconds = 0.0
    }

    var linesPerSecond: Double { Double(lines) / seconds }
    /// Lines priced and settled per second: from the first batch until the fold caught up.
    var settledPerSecond: Double { Double(lines) / (seconds + foldSeconds) }
    var copyRowsPerSecond: Double { Double(rawCopy.rows) / rawCopy.seconds }
    var walPerLine: Double { Double(walBytes) / Double(max(stored, 1)) }
    var copyWALPerRow: Double { Double(rawCopy.walBytes) / Double(max(rawCopy.rows, 1)) }
    /// The machine's CPU per line appended and per row of the raw COPY, in microseconds: where
    /// both keep every core busy, Tally / raw COPY is their inverse ratio.
    var cpuPerLine: Double { machineCPUSeconds * 1e6 / Double(lines) }
    var copyCPUPerRow: Double { rawCopy.machineCPUSeconds * 1e6 / Double(max(rawCopy.rows, 1)) }
    var machineCores: Double { machineCPUSeconds / seconds }

    /// The wait events, most frequent first, as shares of the samples.
    var topWaits: String {
        let total = max(waits.values.reduce(0, +), 1)
        return waits.sorted { $0.value > $1.value }.prefix(4)
            .map { "\($0.key) \(Int((Double($0.value) * 100 / Double(total)).rounded()))%" }.joined(separator: ", ")
    }

    var row: String {
        let cpu = serverCPUSeconds.map { String(format: "%.1f", $0) } ?? "-"
        let rss = peakRSSKiB.map { String(format: "%.0f", Double($0) / 1024) } ?? "-"
        return String(
            format: "%7d %11.0f %11.0f %7.2fx %11.0f %7.2fx %5.1f %5.1f %9.0f %9.0f %6.2fx ", clients,
            linesPerSecond, copyRowsPerSecond, linesPerSecond / copyRowsPerSecond, settledPerSecond,
            settledPerSecond / copyRowsPerSecond, balanceFoldSeconds, foldSeconds, walPerLine,
            copyWALPerRow, walPerLine / copyWALPerRow)
            + String(format: " %5.2f %5.1f %5.1f", machineCores, cpuPerLine, copyCPUPerRow)
            + cpu.leftPadded(to: 7) + " " + rss.leftPadded(to: 6) + "  " + topWaits
            + (failures > 0 || stored != lines
                ? "  (!) \(failures) failed batches, \(stored) of \(lines) rows stored" : "")
            + (checkpointed || rawCopy.checkpointed
                ? "  (!) a checkpoint ran during the step: its WAL per line includes full-page images" : "")
    }

    static let header = """
        clients  Tally l/s  rawCOPY r/s  Tally/  settled l/s settled/ lag s lag s   WAL B/l   WAL B/r   WAL machine  CPU us   srvCPU  RSS MB  PostgreSQL waits during Tally's ingest
                  (append)               COPY   (to caught up)   COPY   bal.  all     Tally  raw COPY  ratio cores Tally  /row        s
        """
}

/// The closing summary, against the targets of DESIGN §10.
struct IngestReport {
    let steps: [IngestStep]
    let perRequest: Double?
    let pgbenchClients: Int

    var text: String {
        var out = [
            "", "ingest benchmark, one run on this machine (\(ProcessInfo.processInfo.activeProcessorCount) cores)",
            IngestStep.header,
        ]
        out += steps.map(\.row)
        if let perRequest, let best = steps.map(\.linesPerSecond).max() {
            out.append(
                String(
                    format:
                        "baseline A, per-request transaction (pgbench, %d clients): %.0f req/s; Tally's best is %.1fx (target >= 3x on 16 cores)",
                    pgbenchClients, perRequest, best / perRequest))
        }
        if let most = steps.max(by: { $0.clients < $1.clients }), most.clients > 2 {
            out.append(
                String(
                    format:
                        "at %d clients: %.0f lines/s, %.2fx raw COPY (targets on 16 cores: >= 0.5x and >= 100k lines/s)",
                    most.clients, most.linesPerSecond, most.linesPerSecond / most.copyRowsPerSecond))
        }
        if let low = steps.filter({ $0.clients <= 2 }).map({ $0.linesPerSecond / $0.copyRowsPerSecond }).min() {
            out.append(String(format: "Tally / raw COPY at 1-2 clients: >= %.2fx (target >= 0.6x)", low))
        }
        if let low = steps.filter({ $0.clients <= 2 }).map({ $0.settledPerSecond / $0.copyRowsPerSecond }).min() {
            out.append(String(format: "priced and settled / raw COPY at 1-2 clients: >= %.2fx", low))
        }
        if let lag = steps.map(\.foldSeconds).max() {
            out.append(
                String(
                    format: "fold lag after the last batch: <= %.1f s (balances <= %.1f s)", lag,
                    steps.map(\.balanceFoldSeconds).max() ?? 0))
        }
        if let few = steps.filter({ $0.clients <= 2 }).max(by: { $0.clients < $1.clients }) {
            out.append(
                String(
                    format:
                        "machine CPU at %d client(s): %.1f us a line appended, %.1f us a row of the raw COPY (%.2fx; "
                        + "%.2f and %.2f cores used); where both keep every core busy, Tally / raw COPY is near %.2fx",
                    few.clients, few.cpuPerLine, few.copyCPUPerRow, few.cpuPerLine / few.copyCPUPerRow,
                    few.machineCores, few.rawCopy.machineCPUSeconds / few.rawCopy.seconds,
                    few.copyCPUPerRow / few.cpuPerLine))
        }
        if let worst = steps.map({ $0.walPerLine / $0.copyWALPerRow }).max() {
            out.append(String(format: "WAL per line, Tally / raw COPY: <= %.2fx (target <= 2x)", worst))
        }
        if let rss = steps.compactMap(\.peakRSSKiB).max() {
            out.append(
                String(
                    format: "server peak RSS (VmHWM): %.0f MB (target <= 200 MB with 8 concurrent 10k-line batches)",
                    Double(rss) / 1024))
        }
        let rates = steps.map(\.linesPerSecond)
        if rates.count > 1 {
            out.append(
                "throughput as clients rise: "
                    + (zip(rates, rates.dropFirst()).allSatisfy { $1 >= $0 * 0.95 } ? "does not fall" : "FALLS"))
        }
        return out.joined(separator: "\n")
    }
}

/// Generated batches as complete HTTP requests, and the clients that post them.
enum IngestBatches {
    static func requests(lines: Int, users: Int, batch: Int, seed: UInt64, secret: String) -> [[UInt8]] {
        var options = LogGenerator.Options()
        options.lines = lines
        options.users = users
        options.seed = seed
        // Recent enough to be priced and partitioned, never in the future.
        options.start = Date().addingTimeInterval(-3 * 3600)
        options.span = 2 * 3600
        var generator = LogGenerator(options)
        var requests: [[UInt8]] = []
        var body: [UInt8] = []
        var count = 0
        func flush() {
            guard count > 0 else { return }
            let head =
                "POST /gateway/v1/logs HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer \(secret)\r\n"
                + "Content-Type: application/x-ndjson\r\nContent-Length: \(body.count)\r\n\r\n"
            requests.append(Array(head.utf8) + body)
            body.removeAll(keepingCapacity: true)
            count = 0
        }
        while let line = generator.next() {
            body += line.utf8
            body.append(10)
            count += 1
            if count == batch { flush() }
        }
        flush()
        return requests
    }

    /// Posts every request, `clients` at a time on keep-alive connections; returns the failures.
    static func post(_ requests: [[UInt8]], clients: Int, endpoint: HTTPEndpoint) -> Int {
        let next = Atomic<Int>(0), failures = Atomic<Int>(0)
        let group = DispatchGroup()
        for _ in 0..<clients {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                var connection: HTTPConnection?
                while true {
                    let index = next.add(1, ordering: .relaxed).oldValue
                    guard index < requests.count else { return }
                    do {
                        if connection == nil { connection = try HTTPConnection(endpoint) }
                        if try connection!.exchange(requests[index]) != 200 { failures.add(1, ordering: .relaxed) }
                    } catch {
                        failures.add(1, ordering: .relaxed)
                        connection = nil
                    }
                }
            }
        }
        group.wait()
        return failures.load(ordering: .relaxed)
    }
}

/// Where the WAL stood, and how many checkpoints had run, at one moment of a step.
struct WALMark {
    let position: Int64
    let checkpoints: Int64

    init(_ db: PostgresConnection) throws {
        let row = try db.query(
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
        )[0]
        position = try row.decode(0)
        checkpoints = try row.decode(1)
    }

    /// The WAL bytes written since `earlier`, and whether a checkpoint ran meanwhile (its
    /// full-page images are then among them).
    func since(_ earlier: WALMark) -> (bytes: Int64, checkpointed: Bool) {
        (position - earlier.position, checkpoints != earlier.checkpoints)
    }
}

/// The baselines and the measurements around them, on the benchmark's own tables.
enum IngestBaselines {
    /// `bench_raw_logs`: request_logs' columns, indexes and monthly partitions; and copies of
    /// users and tokens for the per-request baseline, so the real balances stay untouched.
    static func prepareTables(on db: PostgresConnection) throws {
        try db.execute(
            """
            DROP TABLE IF EXISTS bench_raw_logs, bench_request_logs, bench_users, bench_tokens;
            CREATE TABLE bench_raw_logs (LIKE request_logs INCLUDING ALL) PARTITION BY RANGE (created_at);
            CREATE TABLE bench_request_logs (LIKE request_logs INCLUDING ALL) PARTITION BY RANGE (created_at);
            CREATE TABLE bench_users (LIKE users INCLUDING ALL);
            INSERT INTO bench_users SELECT * FROM users;
            CREATE TABLE bench_tokens (LIKE tokens INCLUDING ALL);
            INSERT INTO bench_tokens SELECT * FROM tokens;
            """)
        let months = try db.query(
            "SELECT month::text, (month + interval '1 month')::date::text FROM tally_log_partitions"
        )
        .map { (try $0.decode(0, as: String.self), try $0.decode(1, as: String.self)) }
        for (month, next) in months {
            let suffix = month.prefix(7).replacingOccurrences(of: "-", with: "m")
            for table in ["bench_raw_logs", "bench_request_logs"] {
                try db.execute(
                    """
                    CREATE TABLE \(table)_y\(suffix) PARTITION OF \(table)
                    FOR VALUES FROM ('\(month) 00:00:00+00') TO ('\(next) 00:00:00+00')
                    """)
            }
        }
    }

    /// What the run is measured against: the database's durability settings and sizes.
    static func settings(on db: PostgresConnection, users: Int, batch: Int) throws -> String {
        let names = [
            "server_version", "fsync", "synchronous_commit", "wal_level", "shared_buffers", "max_wal_size",
            "checkpoint_timeout", "wal_compression",
        ]
        let values = try names.map {
            "\($0)=\(try db.query("SELECT current_setting($1)", [$0])[0].decode(0, as: String.self))"
        }
        return "PostgreSQL: \(values.joined(separator: " ")); \(users) users (zipf), \(batch)-line batches"
    }

    /// Waits (up to 5 minutes) until every pending charge is folded and all pending usage is
    /// rolled up; returns the seconds until the balances were folded and until both were.
    static func waitUntilFolded(_ db: PostgresConnection) throws -> (balances: Double, all: Double) {
        let started = DispatchTime.now().uptimeNanoseconds
        func elapsed() -> Double { Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9 }
        var balances: Double?
        while true {
            let row = try db.query(
                "SELECT EXISTS (SELECT 1 FROM pending_charges), EXISTS (SELECT 1 FROM pending_usage)")[0]
            let charges = try row.decode(0, as: Bool.self), usage = try row.decode(1, as: Bool.self)
            if !charges, balances == nil { balances = elapsed() }
            if !charges, !usage { return (balances ?? 0, elapsed()) }
            guard elapsed() < 300 else {
                throw BenchError.io("charges still pending after 5 minutes: is a settler running?")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }

    /// Baseline B: the rows Tally stored in this step, copied out, then COPYed into the
    /// identical table by `clients` connections at once.
    static func rawCopy(afterBatch firstBatch: Int64, clients: Int, databaseURL: String, db: PostgresConnection) throws
        -> IngestStep.RawCopy
    {
        var rows: [UInt8] = []
        try db.copyOut("COPY (SELECT * FROM request_logs WHERE batch_id > \(firstBatch)) TO STDOUT") { rows += $0 }
        let parts = split(rows, into: clients)
        let connections = try parts.map { _ in try PostgresConnection(url: databaseURL) }
        var result = IngestStep.RawCopy(rows: rows.reduce(0) { $0 + ($1 == 10 ? 1 : 0) })
        let walBefore = try WALMark(db)
        let cpuBefore = CPUTimes(serverPID: nil).machine
        let started = DispatchTime.now().uptimeNanoseconds
        let failed = Atomic<Int>(0)
        let group = DispatchGroup()
        for (part, connection) in zip(parts, connections) {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                do { try connection.copyIn("COPY bench_raw_logs FROM STDIN") { try $0.write(part) } } catch {
                    failed.add(1, ordering: .relaxed)
                }
            }
        }
        group.wait()
        result.seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        result.machineCPUSeconds = CPUTimes(serverPID: nil).machine - cpuBefore
        (result.walBytes, result.checkpointed) = try WALMark(db).since(walBefore)
        guard failed.load(ordering: .relaxed) == 0 else { throw BenchError.io("the raw COPY baseline failed") }
        return result
    }

    /// COPY text cut into `count` pieces at line ends.
    static func split(_ rows: [UInt8], into count: Int) -> [ArraySlice<UInt8>] {
        var parts: [ArraySlice<UInt8>] = []
        var start = 0
        for part in 1...count {
            var end = part == count ? rows.count : max(start, rows.count * part / count)
            while end < rows.count, end > 0, rows[end - 1] != 10 { end += 1 }
            parts.append(rows[start..<end])
            start = end
        }
        return parts.filter { !$0.isEmpty }
    }

    /// Baseline A: one transaction per request (insert the log row, update the user, update the
    /// token), pgbench on the copies; returns transactions per second.
    static func perRequest(pgbench: String, clients: Int, seconds: Int, users: Int, databaseURL: String) throws
        -> Double
    {
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("tally-per-request-\(getpid()).sql")
        try """
        \\set user random(1, \(users))
        BEGIN;
        INSERT INTO bench_request_logs (request_id, created_at, user_id, token_id, model, "group", kind, status,
            prompt_tokens, completion_tokens, quota)
          VALUES (md5(random()::text), now(), :user, :user, 'gpt-4o', 'default', 'chat', 200, 1000, 500, 3750);
        UPDATE bench_users SET quota = quota - 3750, used_quota = used_quota + 3750, request_count = request_count + 1
          WHERE id = :user;
        UPDATE bench_tokens SET remain_quota = remain_quota - 3750, used_quota = used_quota + 3750,
          request_count = request_count + 1 WHERE user_id = :user;
        COMMIT;
        """.write(to: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: script) }
        FileHandle.standardError.write(
            Data("bench ingest: per-request baseline, pgbench \(clients) clients, \(seconds) s\n".utf8))
        let threads = min(clients, ProcessInfo.processInfo.activeProcessorCount)
        var environment = ProcessInfo.processInfo.environment
        environment["PGOPTIONS"] = "-c client_min_messages=warning"
        let text = try Subprocess.output(
            of: pgbench,
            [
                "-n", "-c", "\(clients)", "-j", "\(threads)", "-T", "\(seconds)",
                "-f", script.path, databaseURL,
            ], environment: environment)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("tps = ") }),
            let tps = Double(line.dropFirst(6).prefix { $0.isNumber || $0 == "." })
        else {
            throw BenchError.io("pgbench gave no tps: \(text.suffix(400))")
        }
        return tps
    }
}

/// Samples PostgreSQL's wait events of the client backends every 20 ms on its own connection.
final class WaitEventSampler: Sendable {
    private let counts = Mutex<[String: Int]>([:])
    private let stopped = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    init(databaseURL: String) throws {
        let connection = try PostgresConnection(url: databaseURL)
        Thread.detachNewThread { [self] in
            defer { finished.signal() }
            while !stopped.load(ordering: .relaxed) {
                if let rows = try? connection.query(
                    """
                    SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity
                    WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
                      AND datname = current_database()
                    """)
                {
                    let events = rows.map { (try? $0.decode(0, as: String.self)) ?? "?" }
                    counts.withLock { for event in events { $0[event, default: 0] += 1 } }
                }
                Thread.sleep(forTimeInterval: 0.02)
            }
        }
    }

    /// Stops sampling; the samples by event.
    func stop() -> [String: Int] {
        stopped.store(true, ordering: .relaxed)
        finished.wait()
        return counts.withLock { $0 }
    }
}

/// Peak memory of a process on this host, from /proc (its CPU time: `CPUTimes`).
enum ProcessStats {
    static func peakRSSKiB(pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") })
        else { return nil }
        return Int(line.split(separator: " ")[1])
    }
}

/// Runs a program to its end and returns what it wrote to standard output and error. Spawned
/// with every signal unblocked: Foundation's `Process` hands a child the signals its calling
/// thread blocks, and pgbench ends a `-T` run on SIGALRM.
enum Subprocess {
    static func output(of program: String, _ arguments: [String], environment: [String: String]) throws -> String {
        var pipe: [Int32] = [0, 0]
        guard Glibc.pipe(&pipe) == 0 else { throw BenchError.io("pipe") }
        defer { close(pipe[0]) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, pipe[1], 2)
        posix_spawn_file_actions_addclose(&actions, pipe[0])
        posix_spawn_file_actions_addclose(&actions, pipe[1])
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var unblocked = sigset_t(), defaults = sigset_t()
        sigemptyset(&unblocked)
        sigemptyset(&defaults)
        for signal in [SIGALRM, SIGINT, SIGTERM, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([program] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid = pid_t()
        let spawned = posix_spawnp(&pid, program, &actions, &attributes, argv, envp)
        close(pipe[1])
        guard spawned == 0 else { throw BenchError.io("cannot run \(program): \(String(cString: strerror(spawned)))") }
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(pipe[0], $0.baseAddress, $0.count) }
            if count > 0 { output += buffer[..<count] } else if count == 0 || errno != EINTR { break }
        }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return String(decoding: output, as: UTF8.self)
    }
}

extension String {
    func leftPadded(to width: Int) -> String { String(repeating: " ", count: max(0, width - count)) + self }
}
