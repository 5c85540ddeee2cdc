import Foundation
import TallyCore
import TallyPostgres
import TallyStore

/// Generated request rows over some months, stored through the real ingest repository (request
/// rows, settlement, ledger charges and rollups in one transaction per batch), and the sums an
/// export must show, computed here independently of SQL.
public struct UsageFixture: Sendable {
    public let lines: [PricedLine]
    /// User id → username, token id → token name, as stored.
    public let usernames: [Int64: String]
    public let tokenNames: [Int64: String]

    /// A user name and a token name that need CSV quoting.
    public static let trickyUsername = #"o'brien, "ann""#
    public static let trickyTokenName = "team, \"blue\"\nkey"
    public static let models = ["gpt-4o", "claude-sonnet-4", "acme/model,v2", "veo-3"]

    /// Seeds three users (the first renamed to `trickyUsername`; the second gets a second key,
    /// `trickyTokenName`), then stores `linesPerMonth` random rows in each month, plus rows at
    /// the first and last instant of each month, in batches of `batchSize` sorted by time (so
    /// batches cross month ends).
    public static func load(
        into db: TestDatabase, months: [UsageMonth], linesPerMonth: Int,
        batchSize: Int = 400
    ) async throws -> UsageFixture {
        try await db.prepareBilling(users: 3)
        let (usernames, tokens) = try await db.pool.transaction { connection in
            try connection.query("UPDATE users SET username = $1 WHERE username = 'synthetic-1'", [trickyUsername])
            try connection.query(
                """
                INSERT INTO tokens (user_id, name, key_hash, key_last6, unlimited_quota)
                SELECT id, $1, sha256(convert_to($2, 'UTF8')), 'tricky', true FROM users WHERE username = 'synthetic-2'
                """, [trickyTokenName, "sk-fixture-\(UUID().uuidString)"])
            let users = try connection.query(
                "SELECT id, username FROM users WHERE username = $1 OR username LIKE 'synthetic-%'",
                [trickyUsername]
            ).map { (try $0.decode(0, as: Int64.self), try $0.decode(1, as: String.self)) }
            let tokens = try connection.query(
                "SELECT id, user_id, name FROM tokens WHERE user_id = ANY($1::bigint[])",
                ["{" + users.map { String($0.0) }.joined(separator: ",") + "}"]
            ).map {
                (
                    id: try $0.decode(0, as: Int64.self), user: try $0.decode(1, as: Int64.self),
                    name: try $0.decode(2, as: String.self)
                )
            }
            return (Dictionary(uniqueKeysWithValues: users), tokens)
        }
        var lines: [PricedLine] = []
        for month in months {
            let start = month.start.timeIntervalSince1970
            let end = month.adding(months: 1).start.timeIntervalSince1970
            var instants = (0..<linesPerMonth).map { _ in Double.random(in: start..<end) }
            instants += [start, end - 0.001]
            for instant in instants {
                let token = tokens.randomElement()!
                lines.append(
                    randomLine(
                        at: Date(timeIntervalSince1970: (instant * 1000).rounded(.down) / 1000),
                        userID: token.user, tokenID: token.id))
            }
        }
        lines.sort { $0.createdAt < $1.createdAt }
        let repository = PostgresIngestRepository(pool: db.pool)
        for (index, start) in stride(from: 0, to: lines.count, by: batchSize).enumerated() {
            let batch = Array(lines[start..<min(start + batchSize, lines.count)])
            _ = try await repository.store(
                batch, rejects: [], totalLines: batch.count, tid: TraceID.generate(), source: "test")
            // Every other batch folded: readers see folded and pending charges side by side.
            if index % 2 == 0 { try await db.fold() }
        }
        return UsageFixture(
            lines: lines, usernames: usernames,
            tokenNames: Dictionary(uniqueKeysWithValues: tokens.map { ($0.id, $0.name) }))
    }

    static func randomLine(at date: Date, userID: Int64, tokenID: Int64) -> PricedLine {
        let failed = Int.random(in: 0..<20) == 0
        let model = models.randomElement()!
        var usage = Usage(
            promptTokens: .random(in: 0...5000), completionTokens: .random(in: 0...2000),
            cachedTokens: .random(in: 0...100), cacheWriteTokens: .random(in: 0...50),
            audioInputTokens: .random(in: 0...3), audioOutputTokens: .random(in: 0...3))
        if model == "veo-3" {
            usage.videoSeconds = ExactDecimal(mantissa: Int128(Int.random(in: 1...40)), scale: 1)!
            usage.predictTime = ExactDecimal(mantissa: Int128(Int.random(in: 0...999)), scale: 3)!
            usage.images = .random(in: 0...2)
            usage.calls = .random(in: 0...1)
        }
        return PricedLine(
            requestID: UUID().uuidString.lowercased(), createdAt: date, userID: userID, tokenID: tokenID,
            channelID: nil, model: model, group: Bool.random() ? "default" : "vip", kind: .chat,
            status: failed ? 500 : 200, isStream: false, durationMs: 10, ip: nil, tid: nil, error: nil,
            usage: usage, quota: failed ? 0 : .random(in: 1...50_000), priceVersionID: 1)
    }

    // MARK: Expected exports

    /// The rows `export` must produce for `month`, as CSV fields, sorted as the export sorts.
    /// Decimals are compared by value (see `sameValue`), every other field as text.
    public func expectedRows(
        month: UsageMonth, by dimensions: [ExportDimension], userID: Int64? = nil,
        timeZone: TimeZone = TimeZone(identifier: "UTC")!
    ) -> [[String]] {
        let start = month.start, end = month.adding(months: 1).start
        let dayFormat = DateFormatter()
        dayFormat.locale = Locale(identifier: "en_US_POSIX")
        dayFormat.timeZone = timeZone
        dayFormat.dateFormat = "yyyy-MM-dd"
        var totals: [[String]: Totals] = [:]
        for line in lines
        where line.createdAt >= start && line.createdAt < end && (userID == nil || line.userID == userID) {
            let key = dimensions.flatMap { dimension -> [String] in
                switch dimension {
                case .user: [String(line.userID), usernames[line.userID] ?? ""]
                case .token: [String(line.tokenID), tokenNames[line.tokenID] ?? ""]
                case .model: [line.model]
                case .group: [line.group]
                case .day: [dayFormat.string(from: line.createdAt)]
                }
            }
            totals[key, default: Totals()].add(line)
        }
        let sortedKeys = totals.keys.sorted { lhs, rhs in
            for (index, (left, right)) in zip(lhs, rhs).enumerated() where left != right {
                // Ids sort as numbers, names never decide (an id precedes them), text by bytes.
                if let l = Int64(left), let r = Int64(right), Self.isID(index, dimensions) { return l < r }
                return Array(left.utf8).lexicographicallyPrecedes(Array(right.utf8))
            }
            return false
        }
        return sortedKeys.map { $0 + totals[$0]!.fields }
    }

    static func isID(_ column: Int, _ dimensions: [ExportDimension]) -> Bool {
        var index = 0
        for dimension in dimensions {
            if index == column { return dimension == .user || dimension == .token }
            index += dimension == .user || dimension == .token ? 2 : 1
        }
        return false
    }

    /// The quota of `month`'s rows per user.
    public func quota(month: UsageMonth, userID: Int64) -> Int64 {
        let start = month.start, end = month.adding(months: 1).start
        return lines.filter { $0.userID == userID && $0.createdAt >= start && $0.createdAt < end }.reduce(0) {
            $0 + $1.quota
        }
    }

    struct Totals {
        var requests: Int64 = 0, failed: Int64 = 0, prompt: Int64 = 0, completion: Int64 = 0, cached: Int64 = 0
        var cacheWrite: Int64 = 0, audioIn: Int64 = 0, audioOut: Int64 = 0, images: Int64 = 0, calls: Int64 = 0,
            quota: Int64 = 0
        /// Thousandths of a second.
        var videoMillis: Int64 = 0, predictMillis: Int64 = 0

        mutating func add(_ line: PricedLine) {
            let usage = line.usage
            requests += 1
            failed += line.status >= 400 ? 1 : 0
            prompt += usage.promptTokens
            completion += usage.completionTokens
            cached += usage.cachedTokens
            cacheWrite += usage.cacheWriteTokens
            audioIn += usage.audioInputTokens
            audioOut += usage.audioOutputTokens
            images += usage.images
            videoMillis += UsageFixture.millis(usage.videoSeconds)
            calls += usage.calls
            predictMillis += UsageFixture.millis(usage.predictTime)
            quota += line.quota
        }

        var fields: [String] {
            [requests, failed, prompt, completion, cached, cacheWrite, audioIn, audioOut, images].map(String.init)
                + [
                    UsageFixture.decimal(millis: videoMillis), String(calls),
                    UsageFixture.decimal(millis: predictMillis),
                    String(quota), Money.formatUSD(units: quota),
                ]
        }
    }

    static func millis(_ value: ExactDecimal) -> Int64 {
        var mantissa = value.mantissa * 1000
        for _ in 0..<value.scale { mantissa /= 10 }
        return Int64(mantissa)
    }

    static func decimal(millis: Int64) -> String { ExactDecimal(mantissa: Int128(millis), scale: 3)!.description }

    /// The first difference between exported rows and expected ones, nil when they agree.
    public static func mismatch(_ rows: [[String]], _ expected: [[String]]) -> String? {
        guard rows.count == expected.count else { return "\(rows.count) rows, expected \(expected.count)" }
        for (row, want) in zip(rows, expected) where row.count != want.count || !zip(row, want).allSatisfy(sameValue) {
            return "got \(row), expected \(want)"
        }
        return nil
    }

    /// Field equality where decimals (`12.5` vs `12.500`) compare by value.
    static func sameValue(_ lhs: String, _ rhs: String) -> Bool {
        if lhs == rhs { return true }
        guard lhs.contains("."), let left = try? ExactDecimal(lhs), let right = try? ExactDecimal(rhs) else {
            return false
        }
        return !(left < right) && !(right < left)
    }
}

/// Python's `csv` module as an independent RFC 4180 parser.
public enum CSVParser {
    public static func parse(_ text: String) throws -> [[String]] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [
            "python3", "-X", "utf8", "-c",
            "import csv, json, sys; json.dump(list(csv.reader(sys.stdin, strict=True)), sys.stdout)",
        ]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        input.fileHandleForWriting.write(Data(text.utf8))
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0, let rows = try JSONSerialization.jsonObject(with: data) as? [[String]]
        else {
            throw TestClusterError(message: "python3 csv could not parse the export")
        }
        return rows
    }
}
