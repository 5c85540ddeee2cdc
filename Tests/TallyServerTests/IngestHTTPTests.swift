import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyServer
import TallyStore
import TallyTestSupport
import Testing

/// POST /gateway/v1/logs through the real server and PostgreSQL. Each test uses its own
/// synthetic users (distinct indices) so balances are independent within the shared database;
/// serialized because some tests count rows of shared tables.
@Suite("ingest over HTTP", .serialized)
struct IngestHTTPTests {
    static let secret = "test-gateway-secret"
    static let auth: HTTPFields = [.authorization: "Bearer \(secret)"]
    /// gpt-4o, default group, 1000 in / 500 out (DESIGN §3 golden).
    static let chatCost: Int64 = 3750
    static let initialQuota: Int64 = 1_000_000_000

    static func database() async throws -> TestDatabase {
        let db = try await TestDatabase.shared("ingest")
        try await db.prepareBilling(users: 40, quota: initialQuota)
        return db
    }

    static func post(_ client: some TestClientProtocol, _ body: String, query: String = "") async throws -> (
        HTTPResponse.Status, [String: Any]
    ) {
        try await client.execute(
            uri: "/gateway/v1/logs\(query)", method: .post, headers: auth, body: ByteBuffer(string: body)
        ) { response in
            let object = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any] ?? [:]
            return (response.status, object)
        }
    }

    static func balance(_ db: TestDatabase, user: Int) async throws -> Int64 {
        try await db.scalar(
            "SELECT b.quota FROM user_balances b JOIN users u ON u.id = b.id WHERE u.username = $1",
            [SyntheticKeys.username(forUser: user)])
    }

    @Test("the gateway secret is required and checked")
    func gatewayAuth() async throws {
        let db = try await Self.database()
        try await TestApp.build(db).test(.live) { client in
            try await client.execute(uri: "/gateway/v1/logs", method: .post, body: ByteBuffer(string: "{}")) {
                response in
                #expect(response.status == .unauthorized)
                let error = try ErrorBody(response.body)
                #expect(error.code == "missing_token")
            }
            try await client.execute(
                uri: "/gateway/v1/logs", method: .post, headers: [.authorization: "Bearer wrong"],
                body: ByteBuffer(string: "{}")
            ) { response in
                #expect(response.status == .unauthorized)
                let body = try ErrorBody(response.body)
                #expect(body.code == "invalid_token")
                #expect(body.envelope == "gateway")
            }
        }
    }

    @Test("the same batch twice charges once; the second is all duplicates")
    func sameBatchTwice() async throws {
        let db = try await Self.database()
        let lines = (1...20).map { LogLines.chat("twice-\($0)", user: 1) }
        try await TestApp.build(db).test(.live) { client in
            let (status, first) = try await Self.post(client, LogLines.ndjson(lines))
            #expect(status == .ok)
            #expect(first["accepted"] as? Int == 20)
            #expect(first["duplicates"] as? Int == 0)
            #expect(TraceID.isValid(first["tid"] as? String ?? ""))
            let (_, second) = try await Self.post(client, LogLines.ndjson(lines))
            #expect(second["accepted"] as? Int == 0)
            #expect(second["duplicates"] as? Int == 20)
        }
        #expect(try await Self.balance(db, user: 1) == Self.initialQuota - 20 * Self.chatCost)
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'twice-%'") == 20)
        #expect(
            try await db.scalar(
                "SELECT -sum(amount) FROM ledger l JOIN users u ON u.id = l.user_id WHERE u.username = 'synthetic-1' AND kind = 'charge'"
            ) == 20 * Self.chatCost)
    }

    @Test("overlapping batches: only the new lines are charged")
    func overlappingBatches() async throws {
        let db = try await Self.database()
        try await TestApp.build(db).test(.live) { client in
            let (_, first) = try await Self.post(
                client, LogLines.ndjson((1...10).map { LogLines.chat("overlap-\($0)", user: 2) }))
            let (_, second) = try await Self.post(
                client, LogLines.ndjson((6...15).map { LogLines.chat("overlap-\($0)", user: 2) }))
            #expect(first["accepted"] as? Int == 10)
            #expect(second["accepted"] as? Int == 5)
            #expect(second["duplicates"] as? Int == 5)
        }
        #expect(try await Self.balance(db, user: 2) == Self.initialQuota - 15 * Self.chatCost)
    }

    @Test("concurrent clients sending the same ids: each line charged exactly once")
    func concurrentSameIDs() async throws {
        let db = try await Self.database()
        let body = LogLines.ndjson((1...500).map { LogLines.chat("race-\($0)", user: 3 + $0 % 3) })
        let accepted = try await TestApp.build(db).test(.ahc(.http)) { client in
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        let (status, object) = try await Self.post(client, body)
                        #expect(status == .ok)
                        #expect((object["accepted"] as? Int ?? 0) + (object["duplicates"] as? Int ?? 0) == 500)
                        return object["accepted"] as? Int ?? -1
                    }
                }
                var total = 0
                for try await count in group { total += count }
                return total
            }
        }
        #expect(accepted == 500)
        var charged: Int64 = 0
        for user in 3...5 { charged += Self.initialQuota - (try await Self.balance(db, user: user)) }
        #expect(charged == 500 * Self.chatCost)
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'race-%'") == 500)
    }

    @Test("a mixed batch: bad lines are rejected with reasons, stored raw, never charged")
    func mixedBatch() async throws {
        let db = try await Self.database()
        let key = SyntheticKeys.key(forUser: 6)
        let lines = [
            LogLines.chat("mixed-1", user: 6),
            #"{"request_id":"mixed-2","created_at":"2026-11-10T12:00:00Z","key":"#,  // bad JSON
            #"{"request_id":"mixed-3","created_at":"2026-11-10T12:00:00Z","key":"sk-nobody000000000000000000000000000000000000000000","model":"gpt-4o","usage":{"prompt_tokens":1}}"#,
            #"{"request_id":"mixed-4","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"gpt-4o","usage":{"prompt_tokens":-3}}"#,
            #"{"request_id":"mixed-5","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"gpt-9","usage":{"prompt_tokens":1}}"#,
            #"{"request_id":"mixed-6","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"gpt-4o","status":200}"#,
            #"{"request_id":"mixed-7","created_at":"2099-01-01T00:00:00Z","key":"\#(key)","model":"gpt-4o","usage":{"prompt_tokens":1}}"#,
            #"{"created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"gpt-4o","usage":{"prompt_tokens":1}}"#,
            #"{"request_id":"mixed-9","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"gpt-4o","usage":{"prompt_tokens":200000000}}"#,
            #"{"request_id":"mixed-10","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"gpt-4o","status":429,"error":"provider_rate_limited","usage":null}"#,
            LogLines.chat("mixed-11", user: 6),
            // Found by a review: an image model's success without an image count cost 0, and cached
            // tokens beyond the prompt (Anthropic's count) made the prompt's rest free.
            #"{"request_id":"mixed-12","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"dall-e-3","usage":{}}"#,
            #"{"request_id":"mixed-13","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"claude-sonnet-4","usage":{"prompt_tokens":100,"cached_tokens":5000}}"#,
        ]
        let expected = [
            2: "invalid_json", 3: "unknown_key", 4: "invalid_usage", 5: "unknown_model", 6: "missing_usage",
            7: "future_timestamp", 8: "missing_field", 9: "absurd_usage", 12: "missing_usage", 13: "invalid_usage",
        ]
        try await TestApp.build(db).test(.live) { client in
            let (status, object) = try await Self.post(client, LogLines.ndjson(lines))
            #expect(status == .ok)
            #expect(object["accepted"] as? Int == 3)
            let rejected = object["rejected"] as? [[String: Any]] ?? []
            let codes = Dictionary(
                uniqueKeysWithValues: rejected.map { ($0["line"] as? Int ?? 0, $0["code"] as? String ?? "") })
            #expect(codes == expected)
            #expect(rejected.allSatisfy { !($0["message"] as? String ?? "").isEmpty })
            #expect(rejected.first { $0["line"] as? Int == 4 }?["request_id"] as? String == "mixed-4")
            // A line without an id still has the key (DESIGN §4), null.
            #expect(rejected.first { $0["line"] as? Int == 8 }?["request_id"] is NSNull)
        }
        #expect(try await Self.balance(db, user: 6) == Self.initialQuota - 2 * Self.chatCost)
        #expect(
            try await db.scalar("SELECT count(*) FROM ingest_rejects WHERE raw LIKE '%mixed-%' OR raw LIKE '%\(key)%'")
                >= 7)
        #expect(try await db.scalar("SELECT quota FROM request_logs WHERE request_id = 'mixed-10'") == 0)
        let raw = try await db.pool.withConnection {
            try $0.query("SELECT raw, message FROM ingest_rejects WHERE line = 2 AND raw LIKE '%mixed-2%'")[0].text(0)
        }
        #expect(raw == lines[1])
    }

    @Test("balances, tokens, ledger and usage rollups all equal the sum of the priced lines, before and after the fold")
    func rollupsMatch() async throws {
        let db = try await Self.database()
        let lines = [
            LogLines.chat("sum-1", user: 7, prompt: 1000, completion: 500),  // 3750
            LogLines.chat("sum-2", user: 7, prompt: 2, completion: 0),  // 3 (2.5 rounds up)
            LogLines.chat("sum-3", user: 7, prompt: 1000, completion: 500, group: "vip"),  // 3000
            LogLines.chat("sum-4", user: 7, model: "gemini-2.5-pro", prompt: 250_000, completion: 1000),  // 320000
            // 2,000,000
            #"{"request_id":"sum-5","created_at":"2026-11-10T13:00:00Z","key":"\#(SyntheticKeys.key(forUser: 7))","model":"veo-3","kind":"video","usage":{"video_seconds":8,"resolution":"1080p"}}"#,
        ]
        try await TestApp.build(db).test(.live) { client in
            let (_, object) = try await Self.post(client, LogLines.ndjson(lines))
            #expect(object["accepted"] as? Int == 5)
        }
        let expected: Int64 = 3750 + 3 + 3000 + 320_000 + 2_000_000
        let user = SyntheticKeys.username(forUser: 7)
        // As every reader sees them (pending charges included), then as the fold leaves them.
        for (users, tokens, rollups) in [
            ("user_balances", "token_balances", "usage_rollups"), ("users", "tokens", "usage_daily"),
        ] {
            if users == "users" { try await db.fold() }
            #expect(
                try await db.scalar(
                    "SELECT b.quota FROM \(users) b JOIN users u ON u.id = b.id WHERE u.username = $1", [user])
                    == Self.initialQuota - expected)
            #expect(
                try await db.scalar(
                    "SELECT b.used_quota FROM \(users) b JOIN users u ON u.id = b.id WHERE u.username = $1", [user])
                    == expected)
            #expect(
                try await db.scalar(
                    "SELECT b.request_count FROM \(users) b JOIN users u ON u.id = b.id WHERE u.username = $1", [user])
                    == 5)
            #expect(
                try await db.scalar(
                    "SELECT t.used_quota FROM \(tokens) t JOIN users u ON u.id = t.user_id WHERE u.username = $1",
                    [user]) == expected)
            #expect(
                try await db.scalar(
                    "SELECT sum(d.quota) FROM \(rollups) d JOIN users u ON u.id = d.user_id WHERE u.username = $1",
                    [user]) == expected)
            #expect(
                try await db.scalar(
                    "SELECT sum(requests) FROM \(rollups) d JOIN users u ON u.id = d.user_id WHERE u.username = $1",
                    [user]) == 5)
            #expect(
                try await db.scalar(
                    "SELECT sum(d.quota) FROM \(rollups) d JOIN users u ON u.id = d.user_id WHERE u.username = $1 AND d.\"group\" = 'vip'",
                    [user]) == 3000)
        }
        #expect(
            try await db.scalar(
                "SELECT -sum(amount) FROM ledger l JOIN users u ON u.id = l.user_id WHERE u.username = $1 AND kind = 'charge'",
                [user]) == expected)
        #expect(
            try await db.scalar(
                "SELECT count(*) FROM request_logs WHERE request_id LIKE 'sum-%' AND price_version_id IS NOT NULL AND batch_id IS NOT NULL"
            ) == 5)
        #expect(try await Auditor(pool: db.pool).run().filter { $0.username == user }.isEmpty)
    }

    @Test("limits: more than 50,000 lines or 16 MiB answer 413, a compressed body 415, with a tid, and change nothing")
    func limits() async throws {
        let db = try await Self.database()
        let before = try await db.scalar("SELECT count(*) FROM ingest_batches")
        try await TestApp.build(db).test(.live) { client in
            let tooMany = String(repeating: "{}\n", count: 50_001)
            try await client.execute(
                uri: "/gateway/v1/logs", method: .post, headers: Self.auth, body: ByteBuffer(string: tooMany)
            ) { response in
                #expect(response.status == .contentTooLarge)
                let body = try ErrorBody(response.body)
                #expect(body.code == "payload_too_large")
                #expect(body.tid == response.headers[.xTid])
            }
            let tooBig = String(repeating: " ", count: 16 * 1024 * 1024 + 1)
            try await client.execute(
                uri: "/gateway/v1/logs", method: .post, headers: Self.auth, body: ByteBuffer(string: tooBig)
            ) { response in
                #expect(response.status == .contentTooLarge)
                let error = try ErrorBody(response.body)
                #expect(error.code == "payload_too_large")
            }
            try await client.execute(
                uri: "/gateway/v1/logs", method: .post, headers: Self.auth, body: ByteBuffer(string: "[{}, {}")
            ) { response in
                #expect(response.status == .badRequest)
                let error = try ErrorBody(response.body)
                #expect(error.code == "invalid_request")
            }
            // A compressed batch is refused whole, not read as lines of garbage.
            var gzipped = Self.auth
            gzipped[.contentEncoding] = "gzip"
            try await client.execute(
                uri: "/gateway/v1/logs", method: .post, headers: gzipped,
                body: ByteBuffer(bytes: [0x1F, 0x8B, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00])
            ) { response in
                #expect(response.status == .unsupportedMediaType)
                let error = try ErrorBody(response.body)
                #expect(error.code == "unsupported_media_type")
                #expect(error.message == "Content-Encoding \"gzip\" is not supported; send the batch uncompressed.")
                #expect(error.tid == response.headers[.xTid])
            }
        }
        #expect(try await db.scalar("SELECT count(*) FROM ingest_batches") == before)
    }

    @Test("NUL bytes, raw or escaped, are rejected per line and never fail the batch")
    func nulBytes() async throws {
        let db = try await Self.database()
        let key = SyntheticKeys.key(forUser: 10)
        let body =
            "\u{0}\n"
            + #"{"request_id":"nul-\u0000-1","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"gpt-4o","usage":{"prompt_tokens":1}}"#
            + "\n" + LogLines.chat("nul-ok", user: 10) + "\n"
        try await TestApp.build(db).test(.live) { client in
            let (status, object) = try await Self.post(client, body)
            #expect(status == .ok)
            #expect(object["accepted"] as? Int == 1)
            let codes = (object["rejected"] as? [[String: Any]] ?? []).compactMap { $0["code"] as? String }
            #expect(codes == ["invalid_json", "invalid_field"])
        }
        #expect(try await Self.balance(db, user: 10) == Self.initialQuota - Self.chatCost)
    }

    /// Found by a review of retention: the dropped month was made again and the resent lines
    /// charged a second time.
    @Test("a line of a month retention dropped is rejected (month_dropped), and the month is not made again")
    func droppedMonthStaysDropped() async throws {
        let db = try await TestDatabase.create("ingest-retention")
        try await db.prepareBilling(users: 1, quota: 1_000_000)
        let september = "2026-09-15T12:00:00Z"
        let batch = [LogLines.chat("sept-1", user: 1, at: september), LogLines.chat("sept-2", user: 1, at: september)]
            .joined(separator: "\n")
        let charged = "SELECT coalesce(sum(amount), 0) FROM ledger WHERE kind = 'charge' AND usage_month = '2026-09-01'"
        try await TestApp.build(db).test(.live) { client in
            #expect(try await Self.post(client, batch).1["accepted"] as? Int == 2)
            try await db.fold()
            #expect(try await db.scalar(charged) == -2 * Self.chatCost)
            let retention = LogRetention(pool: db.pool)
            let plan = try await retention.plan(keepMonths: 2, current: UsageMonth("2026-11")!)
            #expect(try await retention.apply(plan, by: .cli).map(\.month).contains(UsageMonth("2026-09")!))
            // Until the instance has read the notice, the batch fails whole (503) and stores nothing.
            let resend = batch + "\n" + LogLines.chat("sept-3", user: 1, at: september)
            var resent: (HTTPResponse.Status, [String: Any]) = (.serviceUnavailable, [:])
            #expect(
                try await waitUntil(timeout: .seconds(10)) {
                    resent = try await Self.post(client, resend)
                    return resent.0 == .ok
                })
            #expect(resent.1["accepted"] as? Int == 0)
            let codes = (resent.1["rejected"] as? [[String: Any]] ?? []).compactMap { $0["code"] as? String }
            #expect(codes == Array(repeating: "month_dropped", count: 3))
        }
        try await db.fold()
        #expect(try await db.scalar(charged) == -2 * Self.chatCost)
        #expect(try await db.scalar("SELECT count(*) FROM tally_log_partitions WHERE month = '2026-09-01'") == 0)
        // Made on purpose too (the daily service, an import): the month stays dropped.
        #expect(try await db.scalar("SELECT tally_create_log_partitions('2026-09-01', 1)") == 0)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    /// Found by a review: a month dropped by retention in another process, before this instance
    /// heard of it, failed the batch with 500 on every try (the month is never made again).
    @Test("a line of a month dropped unheard of fails its batch with 503, and the resend refuses the line once heard")
    func droppedMonthUnheardOf() async throws {
        let db = try await TestDatabase.create("ingest-retention-unheard")
        try await db.prepareBilling(users: 1, quota: 1_000_000)
        let september = "2026-09-15T12:00:00Z"
        try await TestApp.build(db).test(.live) { client in
            #expect(
                try await Self.post(client, LogLines.chat("sept-1", user: 1, at: september)).1["accepted"] as? Int == 1)
            // As `tally retention` does, but without the notice this instance would hear.
            try await db.pool.withConnection { connection in
                try connection.execute("ALTER TABLE request_logs DETACH PARTITION request_logs_y2026m09")
                try connection.execute("DROP TABLE request_logs_y2026m09")
                try connection.execute(
                    "INSERT INTO audit_log (actor, action, target) VALUES ('cli', 'retention.drop', 'request_logs:2026-09')"
                )
            }
            let batch = [LogLines.chat("sept-2", user: 1, at: september), LogLines.chat("nov-1", user: 1)]
                .joined(separator: "\n")
            let failed = try await Self.post(client, batch)
            #expect(failed.0 == .serviceUnavailable)
            #expect((failed.1["error"] as? [String: Any])?["code"] as? String == "database_unavailable")
            try await db.pool.withConnection { try $0.execute("NOTIFY tally_changes, 'logs-dropped'") }
            // Until the instance has read the notice the resend fails as the first try did.
            var resent: (HTTPResponse.Status, [String: Any]) = (.serviceUnavailable, [:])
            #expect(
                try await waitUntil(timeout: .seconds(10)) {
                    resent = try await Self.post(client, batch)
                    return resent.0 == .ok
                })
            #expect(resent.1["accepted"] as? Int == 1)
            let codes = (resent.1["rejected"] as? [[String: Any]] ?? []).compactMap { $0["code"] as? String }
            #expect(codes == ["month_dropped"])
        }
    }

    /// Found by a review: other instances read a new version at their next refresh (5 s by
    /// default), and pricing the lines of its time by the old one meanwhile left them mispriced.
    @Test("a price version stored elsewhere prices the next batch: the instance reloads on its notice, not its timer")
    func versionNoticeReloads() async throws {
        let db = try await TestDatabase.create("ingest-prices")
        try await db.prepareBilling(users: 1, quota: 1_000_000)
        try await TestApp.build(db, { $0.priceRefreshSeconds = 3_600 }).test(.live) { client in
            #expect(try await Self.post(client, LogLines.chat("before", user: 1)).0 == .ok)
            // As `tally prices load` in another process: gpt-4o at twice the price from November 1.
            let doubled = designPriceSheet.replacingOccurrences(
                of: #"gpt-4o: {input: "2.50", output: "10.00""#, with: #"gpt-4o: {input: "5.00", output: "20.00""#)
            #expect(doubled != designPriceSheet)
            _ = try await PostgresPriceRepository(pool: db.pool).load(
                try PriceSheet.parse(doubled), effectiveFrom: OperatorTime.parse("2026-11-01T00:00:00Z"),
                source: "test", by: .cli)
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await Self.post(client, LogLines.chat("after", user: 1)).0 == .ok)
        }
        let charged = try await db.scalar("SELECT sum(quota) FROM request_logs WHERE request_id IN ('before', 'after')")
        #expect(charged == Self.chatCost * 3)
    }

    /// Found by a review: a price sheet may price a call at up to 10^18 USD, and two such lines of
    /// one account in a batch overflowed its sums and stopped the server (and again on resend).
    @Test("a line costing more than one request may (200M USD) is rejected: a full batch of the most stays in Int64")
    func costBeyondAnyRequest() async throws {
        let limits = IngestLimits()
        #expect(!Int64(limits.maxLines).multipliedReportingOverflow(by: limits.usage.maxQuota).overflow)
        let db = try await TestDatabase.create("ingest-oracle")
        try await db.prepareBilling(users: 1, quota: 1_000)
        _ = try await PostgresPriceRepository(pool: db.pool).load(
            try PriceSheet.parse(
                """
                effective_from: 2026-01-01T00:00:00Z
                groups: {default: {ratio: "1"}}
                models: {oracle: {per_call: "10000000000000", kind: call}}
                """), effectiveFrom: nil, source: "test", by: .cli)
        let key = SyntheticKeys.key(forUser: 1)
        let body = (1...2).map {
            #"{"request_id":"oracle-\#($0)","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"oracle","usage":{"calls":1}}"#
        }.joined(separator: "\n")
        try await TestApp.build(db).test(.live) { client in
            let (status, object) = try await Self.post(client, body)
            #expect(status == .ok)
            let rejected = object["rejected"] as? [[String: Any]] ?? []
            #expect(rejected.compactMap { $0["code"] as? String } == ["absurd_usage", "absurd_usage"])
        }
    }

    /// Found by a review: the columns are `integer`, and one such line failed its batch's COPY,
    /// and every resend of the batch, so none of its lines was ever billed.
    @Test("a duration or channel id beyond the integer columns is rejected per line and never fails the batch")
    func integerColumnsOutOfRange() async throws {
        let db = try await Self.database()
        let key = SyntheticKeys.key(forUser: 10)
        func line(_ id: String, _ extra: String) -> String {
            #"{"request_id":"\#(id)","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"gpt-4o",\#(extra),"usage":{"prompt_tokens":1}}"#
        }
        let body = [
            line("long", #""duration_ms":3000000000"#), line("channel", #""channel_id":2147483648"#),
            line("longest", #""duration_ms":2147483647,"channel_id":2147483647"#), LogLines.chat("range-ok", user: 10),
        ].joined(separator: "\n")
        try await TestApp.build(db).test(.live) { client in
            let (status, object) = try await Self.post(client, body)
            #expect(status == .ok)
            #expect(object["accepted"] as? Int == 2)
            let rejected = object["rejected"] as? [[String: Any]] ?? []
            #expect(rejected.compactMap { $0["request_id"] as? String } == ["long", "channel"])
            #expect(rejected.compactMap { $0["code"] as? String } == ["invalid_field", "invalid_field"])
        }
    }

    /// Found by a review: the reject kept the whole id in an indexed column, and PostgreSQL
    /// refuses an index entry of a few KiB that does not compress, so the batch failed with 500
    /// on every resend.
    @Test("a request id of kilobytes is rejected per line and never fails the batch")
    func requestIDOfKilobytes() async throws {
        let db = try await Self.database()
        let key = SyntheticKeys.key(forUser: 11)
        // Random, so that no compression brings the index entry under PostgreSQL's limit.
        let id = Data((0..<3_000).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        let body = [
            #"{"request_id":"\#(id)","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"gpt-4o","usage":{"prompt_tokens":1}}"#,
            #"{"request_id":"\#(id)-2","created_at":"2026-11-10T12:00:00Z","usage":{"prompt_tokens":"#,
            LogLines.chat("long-id-ok", user: 11),
        ].joined(separator: "\n")
        try await TestApp.build(db).test(.live) { client in
            let (status, object) = try await Self.post(client, body)
            #expect(status == .ok)
            #expect(object["accepted"] as? Int == 1)
            let rejected = object["rejected"] as? [[String: Any]] ?? []
            #expect(rejected.compactMap { $0["code"] as? String } == ["invalid_field", "invalid_usage"])
            #expect(rejected.allSatisfy { $0["request_id"] == nil || $0["request_id"] is NSNull })
        }
        #expect(try await Self.balance(db, user: 11) == Self.initialQuota - Self.chatCost)
    }

    @Test("a JSON array body works like NDJSON")
    func jsonArray() async throws {
        let db = try await Self.database()
        let body = "[" + (1...3).map { LogLines.chat("array-\($0)", user: 8) }.joined(separator: ",\n") + "]"
        try await TestApp.build(db).test(.live) { client in
            let (_, object) = try await Self.post(client, body)
            #expect(object["accepted"] as? Int == 3)
        }
        #expect(try await Self.balance(db, user: 8) == Self.initialQuota - 3 * Self.chatCost)
    }

    @Test("a line's key is read as authorize reads it: an admin's -CHANNEL suffix, no sk-, a Bearer scheme")
    func keyForms() async throws {
        let db = try await Self.database()
        let key = SyntheticKeys.key(forUser: 39)
        let forms = [key + "-3", String(key.dropFirst(3)), "Bearer " + key]
        let lines = forms.enumerated().map { index, form in
            LogLines.chat("key-form-\(index)", user: 39).replacingOccurrences(of: key, with: form)
        }
        try await TestApp.build(db).test(.live) { client in
            let (_, object) = try await Self.post(client, LogLines.ndjson(lines))
            #expect(object["accepted"] as? Int == 3, "\(object)")
        }
        #expect(try await Self.balance(db, user: 39) == Self.initialQuota - 3 * Self.chatCost)
    }

    @Test("LiteLLM StandardLoggingPayload lines are accepted with ?format=litellm")
    func liteLLM() async throws {
        let db = try await Self.database()
        let hash = SHA256.hash(data: Array(SyntheticKeys.key(forUser: 9).utf8)).map { String(format: "%02x", $0) }
            .joined()
        let payload =
            #"{"id":"litellm-1","call_type":"acompletion","status":"success","model":"gpt-4o","startTime":1793880000.25,"endTime":1793880001.5,"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500,"metadata":{"user_api_key_hash":"\#(hash)","user_api_key_alias":null,"spend_logs_metadata":{"a":[1,2]}},"response_cost":0.0075,"messages":[{"role":"user","content":"hi \"there\""}]}"#
        try await TestApp.build(db).test(.live) { client in
            let (_, object) = try await Self.post(client, payload + "\n", query: "?format=litellm")
            #expect(object["accepted"] as? Int == 1)
            let (status, _) = try await Self.post(client, payload, query: "?format=bogus")
            #expect(status == .badRequest)
        }
        #expect(try await Self.balance(db, user: 9) == Self.initialQuota - Self.chatCost)
        #expect(try await db.scalar("SELECT duration_ms FROM request_logs WHERE request_id = 'litellm-1'") == 1250)
    }
}
