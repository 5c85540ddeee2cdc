import Foundation
import Synchronization
import TallyCore

/// Gateway clients posting generated NDJSON batches to `POST /gateway/v1/logs` of a server that
/// may be killed, restarted or lose its database at any moment. A batch counts as acknowledged
/// only on a 200; on a connection error or a 503 the client resends the same batch (same request
/// ids) until it is acknowledged, as a gateway must.
public final class IngestLoad: Sendable {
    public struct Options: Sendable {
        public var clients = 4
        /// Synthetic users `1…users` (keys of `SyntheticKeys`).
        public var users = 50
        /// Models priced by `designPriceSheet`.
        public var models = ["gpt-4o", "claude-sonnet-4", "gemini-2.5-pro", "dall-e-3", "veo-3", "suno-v4"]
        public var linesPerBatch = 50...600
        /// Fraction of lines repeating an earlier line of the same client.
        public var duplicateRate = 0.02
        public var seed: UInt64 = 1
        /// A client gives up a batch (and reports it) after failing this long in a row.
        public var giveUpAfter: Duration = .seconds(180)

        public init() {}
    }

    /// What the clients saw.
    public struct Report: Sendable {
        public var batchesAcked = 0
        public var linesAcked = 0
        /// Attempts that were not acknowledged and were sent again.
        public var retries = 0
        /// Batches acknowledged only after at least one retry, and those of them whose
        /// acknowledgement found every line already stored: the killed server had committed
        /// the batch but died before answering.
        public var batchesRetried = 0
        public var batchesCommittedUnacknowledged = 0
        public var connectionErrors = 0
        /// 503 answers in the envelope with a tid.
        public var unavailable = 0
        /// Anything else: statuses other than 200/503, malformed bodies, rejected lines, given-up batches.
        public var unexpected: [String] = []
        /// Acknowledged lines by request id (the line's text).
        public var acked: [String: String] = [:]
    }

    private let url: String
    private let secret: String
    private let options: Options
    private let report = Mutex(Report())
    private let inFlightCount = Atomic<Int>(0)

    /// - Parameter baseURL: `http://host:port` of the server.
    public init(baseURL: String, secret: String, options: Options = Options()) {
        url = baseURL + "/gateway/v1/logs"
        self.secret = secret
        self.options = options
    }

    /// Batches posted and not yet answered right now.
    public var inFlight: Int { inFlightCount.load(ordering: .relaxed) }

    /// The figures so far.
    public var snapshot: Report { report.withLock { $0 } }

    /// Runs the clients until `keepGoing` turns false, and then until each has finished the batch
    /// it was sending; returns the report.
    public func run(while keepGoing: @escaping @Sendable () -> Bool) async -> Report {
        await withTaskGroup(of: Void.self) { group in
            for client in 0..<options.clients {
                group.addTask { await self.client(client, keepGoing: keepGoing) }
            }
        }
        return snapshot
    }

    private func client(_ number: Int, keepGoing: @Sendable () -> Bool) async {
        var generatorOptions = LogGenerator.Options()
        generatorOptions.users = options.users
        generatorOptions.models = options.models
        generatorOptions.duplicateRate = options.duplicateRate
        generatorOptions.seed = options.seed &* 1_000_003 &+ UInt64(number)
        generatorOptions.lines = Int.max
        var generator = LogGenerator(generatorOptions)
        var random = SplitMix64(seed: generatorOptions.seed)
        while keepGoing() {
            let count = Int.random(in: options.linesPerBatch, using: &random)
            let lines = (0..<count).compactMap { _ in generator.next() }
            await send(lines)
        }
    }

    /// Posts one batch until it is acknowledged (or given up).
    private func send(_ lines: [String]) async {
        let body = Data(LogLines.ndjson(lines).utf8)
        let headers = ["Authorization": "Bearer \(secret)", "Content-Type": "application/x-ndjson"]
        let started = ContinuousClock.now
        var attempts = 0
        while true {
            attempts += 1
            inFlightCount.add(1, ordering: .relaxed)
            let outcome: Result<HTTP.Answer, any Error>
            do {
                outcome = .success(try await HTTP.sendAsync("POST", url, headers: headers, body: body, timeout: 120))
            } catch { outcome = .failure(error) }
            inFlightCount.subtract(1, ordering: .relaxed)
            switch outcome {
            case .success(let answer) where answer.status == 200:
                acknowledge(lines, answer.body, retried: attempts > 1)
                return
            case .success(let answer) where answer.status == 503:
                let data = answer.body
                let envelope = EnvelopeError(data)
                report.withLock { report in
                    if envelope?.tidIsValid == true {
                        report.unavailable += 1
                    } else {
                        report.unexpected.append(
                            "503 without the envelope and a tid: \(String(decoding: data.prefix(300), as: UTF8.self))")
                    }
                }
            case .success(let answer):
                report.withLock { $0.unexpected.append("status \(answer.status): \(answer.text.prefix(300))") }
            case .failure:
                report.withLock { $0.connectionErrors += 1 }
            }
            guard ContinuousClock.now - started < options.giveUpAfter else {
                report.withLock {
                    $0.unexpected.append("gave up a batch of \(lines.count) lines after \(options.giveUpAfter)")
                }
                return
            }
            report.withLock { $0.retries += 1 }
            try? await Task.sleep(for: .milliseconds(Int.random(in: 20...150)))
        }
    }

    private func acknowledge(_ lines: [String], _ data: Data, retried: Bool) {
        let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        let accepted = object?["accepted"] as? Int
        let duplicates = object?["duplicates"] as? Int
        let rejected = object?["rejected"] as? [Any]
        report.withLock { report in
            guard let accepted, let duplicates, let rejected, accepted + duplicates == lines.count, rejected.isEmpty
            else {
                report.unexpected.append(
                    "acknowledgement does not account for \(lines.count) lines: \(String(decoding: data.prefix(300), as: UTF8.self))"
                )
                return
            }
            report.batchesAcked += 1
            report.linesAcked += lines.count
            if retried {
                report.batchesRetried += 1
                if accepted == 0 { report.batchesCommittedUnacknowledged += 1 }
            }
            for line in lines {
                if let id = LogLines.requestID(of: line) { report.acked[id] = line }
            }
        }
    }
}

/// The `error` object of the gateway envelope (or the System API's flat one), if `data` is one.
public struct EnvelopeError: Sendable, Equatable {
    public let code: String
    public let message: String
    public let tid: String

    public init?(_ data: Data) {
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { return nil }
        let fields = object["error"] as? [String: Any] ?? object
        guard let code = fields["code"] as? String, let message = fields["message"] as? String,
            let tid = fields["tid"] as? String
        else { return nil }
        self.code = code
        self.message = message
        self.tid = tid
    }

    /// 32 lowercase hex characters.
    public var tidIsValid: Bool { TraceID.isValid(tid) }
}

extension LogLines {
    /// The `request_id` of a gateway log line, read with the real parser.
    public static func requestID(of line: String) -> String? {
        parse(line)?.requestID
    }

    /// A gateway log line parsed with `LogLine.parse`, nil when it is rejected.
    public static func parse(_ line: String) -> LogLine? {
        var text = line
        return text.withUTF8 { bytes in try? LogLine.parse(bytes) }
    }
}

/// A switch shared between a test's tasks (e.g. "keep the clients going").
public final class Switch: Sendable {
    private let value: Atomic<Bool>

    public init(_ on: Bool = true) { value = Atomic(on) }

    public var isOn: Bool { value.load(ordering: .acquiring) }

    public func turnOff() { value.store(false, ordering: .releasing) }

    public func turnOn() { value.store(true, ordering: .releasing) }
}
