import Foundation
import Synchronization
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// Ingest appends, the settler folds (docs/ingest.md): balances are exact for every reader
/// between folds, each charge is folded once, and nothing lets an account overdraw.
@Suite("Ingest: append, then fold")
struct IngestFoldHTTPTests {
    static let affordable = 120
    static let workers = 12

    @Test(
        "one account charged by many concurrent batches through two servers, with holds and authorize in the mix: folded exactly once, never overdrawn, audit clean throughout"
    )
    func concurrentBatchesOneAccount() async throws {
        // The user's balance binds; the limited key has room to spare and is checked too.
        let account = try await AuthorizeRaceTests.Account(
            "fold-race", quota: Int64(Self.affordable) * chatHold,
            key: TokenDraft(name: "k", remainQuota: 2 * Int64(Self.affordable) * chatHold, unlimitedQuota: false))
        let (db, seed, key) = (account.db, account.seed, account.key)
        // Folds every 10 ms, so they interleave with the batches many times over.
        let servers = try (0..<2).map { _ in
            try ServerProcess(databaseURL: db.url, environment: ["TALLY_SETTLE_INTERVAL": "10"])
        }
        defer { servers.forEach { $0.stop() } }

        let watch = BalanceWatch(db: db, userID: account.userID)
        let watching = Task { try await watch.run() }
        let granted = try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<Self.workers {
                group.addTask {
                    try await Self.authorizeAndSettle(worker: worker, account: account, servers: servers, key: key)
                }
            }
            return try await group.reduce(0, +)
        }
        watch.stop()
        let observed = try await watching.value
        servers.forEach { $0.stop() }

        let spent = Int64(Self.affordable) * chatHold
        #expect(granted == Self.affordable)
        #expect(observed.overdrawn.isEmpty, "\(observed.overdrawn.prefix(5))")
        #expect(observed.auditFailures.isEmpty, "\(observed.auditFailures.prefix(5))")
        #expect(observed.audits > 3)
        #expect(observed.foldsSeen >= 2, "the settlers folded while batches were still arriving")
        #expect(try await seed.int("SELECT count(*) FROM request_logs") == Int64(Self.affordable))
        // Exact before the last fold, and the same once everything is folded: each charge once.
        #expect(try await seed.int("SELECT quota FROM user_balances WHERE id = $1", [account.userID]) == 0)
        try await db.fold()
        #expect(
            try await seed.int("SELECT count(*) FROM pending_charges")
                + (try await seed.int("SELECT count(*) FROM pending_usage")) == 0)
        let user = try await seed.sql(
            "SELECT quota, used_quota, request_count, reserved FROM users WHERE id = $1", [account.userID])[0]
        #expect(try (0..<4).map { try user.decode($0, as: Int64.self) } == [0, spent, Int64(Self.affordable), 0])
        let token = try await seed.sql(
            "SELECT remain_quota, used_quota, request_count, reserved FROM tokens WHERE user_id = $1",
            [account.userID])[0]
        #expect(try (0..<4).map { try token.decode($0, as: Int64.self) } == [spent, spent, Int64(Self.affordable), 0])
        #expect(try await seed.int("SELECT sum(quota) FROM usage_daily WHERE user_id = $1", [account.userID]) == spent)
        #expect(
            try await seed.int(
                "SELECT -sum(amount) FROM ledger WHERE user_id = $1 AND kind = 'charge'", [account.userID]) == spent)
        #expect(try await seed.int("SELECT count(*) FROM holds WHERE status = 'settled'") == Int64(Self.affordable))
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    /// A database priced by the enforcement sheet, with a channel for gpt-4o and one user whose
    /// quota covers 10 holds of `chatHold` and whose limited key has room for 20.
    static func accountWithLimitedKey(_ name: String) async throws -> (
        db: TestDatabase, seed: Seed, user: User, accessToken: String, token: APIToken, key: String
    ) {
        let db = try await TestDatabase.create(name)
        let seed = Seed(db: db)
        try await seed.prices(enforcementSheet)
        _ = try await seed.channel(groups: ["default"], models: ["gpt-4o"])
        let (user, accessToken) = try await seed.user(quota: 10 * chatHold)
        let (token, key) = try await seed.key(
            user: user.id, TokenDraft(name: "k", remainQuota: 20 * chatHold, unlimitedQuota: false))
        return (db, seed, user, accessToken, token, key)
    }

    /// Authorizes holds of `chatHold` and settles each at exactly that cost, a few lines per
    /// batch, alternating servers, until the account refuses three times in a row (settling
    /// at the hold's cost frees nothing, so a refusal is final). Returns the holds granted.
    static func authorizeAndSettle(
        worker: Int, account: AuthorizeRaceTests.Account, servers: [ServerProcess],
        key: String
    ) async throws -> Int {
        var granted = 0, refusals = 0, attempt = 0
        var batch: [String] = []
        let headers = ["Authorization": "Bearer \(servers[0].gatewaySecret)", "Content-Type": "application/x-ndjson"]
        func flush() async throws {
            guard !batch.isEmpty else { return }
            let server = servers[(worker + attempt) % servers.count]
            let answer = try await HTTP.sendAsync(
                "POST", "\(server.baseURL)/gateway/v1/logs", headers: headers,
                body: Data(batch.joined(separator: "\n").utf8))
            #expect(answer.status == 200, "\(answer.text)")
            #expect(answer.text.contains(#""accepted":\#(batch.count)"#), "\(answer.text)")
            batch.removeAll()
        }
        while refusals < 3 {
            attempt += 1
            let requestID = "fold-\(worker)-\(attempt)"
            let status = try await account.authorize(servers[attempt % servers.count], requestID)
            if status == 200 {
                granted += 1
                refusals = 0
                batch.append(
                    #"{"request_id":"\#(requestID)","created_at":"\#(Gateway.now)","key":"\#(key)","model":"gpt-4o","kind":"chat","status":200,"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#
                )
                if batch.count == 4 { try await flush() }
            } else {
                #expect(status == 403)
                refusals += 1
                try await flush()
            }
        }
        try await flush()
        return granted
    }

    @Test(
        "with no settler running, every reader sees what committed batches charged: System API, keys, authorize, statement, export, audit"
    )
    func readersIncludePending() async throws {
        // The user's balance binds (the key's limit is checked by FoldTests.leasesSeePending).
        let (db, seed, user, accessToken, token, key) = try await Self.accountWithLimitedKey("fold-readers")
        let adminToken = try await seed.user("admin", role: .admin).token
        let month = UsageMonth(containing: Date())
        try await TestApp.build(db, { $0.settleIntervalMilliseconds = 0 }).test(.live) { client in
            let gateway = Gateway(client: client), api = API(client: client)
            let lines = (0..<6).map {
                #"{"request_id":"plain-\#($0)","created_at":"\#(Gateway.now)","key":"\#(key)","model":"gpt-4o","kind":"chat","status":200,"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#
            }
            #expect(try await gateway.post("/logs", lines.joined(separator: "\n")).status == 200)
            // Nothing folded: the rows of users and tokens are as before…
            #expect(try await seed.int("SELECT quota FROM users WHERE id = $1", [user.id]) == 10 * chatHold)
            #expect(try await seed.int("SELECT count(*) FROM pending_charges WHERE user_id = $1", [user.id]) > 0)
            // …and every reader sees the charges all the same.
            let me = try await api.get("/api/user/self", token: accessToken)
            #expect(int64(me.dataObject["quota"]) == 4 * chatHold)
            #expect(int64(me.dataObject["used_quota"]) == 6 * chatHold)
            #expect(int64(me.dataObject["request_count"]) == 6)
            let keys = try await api.get("/api/token/?p=1&size=10", token: accessToken)
            let listed = try #require((keys.dataObject["items"] as? [[String: Any]])?.first)
            #expect(int64(listed["remain_quota"]) == 14 * chatHold)
            #expect(int64(listed["used_quota"]) == 6 * chatHold)
            // Leases grant from quota − reserved − pending: the account has 4 holds left, not 10.
            for index in 1...4 {
                #expect(try await gateway.authorize(key: key, requestID: "after-\(index)").status == 200)
            }
            let refused = try await gateway.authorize(key: key, requestID: "after-5")
            #expect(refused.status == 403, "\(refused.text)")
            let export = try await api.get(
                "/api/admin/exports/usage?month=\(month)&by=user&user_id=\(user.id)", token: adminToken)
            #expect(export.text.contains(",\(6 * chatHold),"), "\(export.text)")
        }
        let statement = try await StatementRepository(pool: db.pool).statement(userID: user.id, month: month)
        #expect(statement.charges == 6 * chatHold)
        #expect(statement.closingBalance == 4 * chatHold)
        #expect(statement.chargesByModel.map(\.quota) == [6 * chatHold])
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
        #expect(try await Auditor(pool: db.pool).run(month: month).isEmpty)
        // Folded, the rows say the same.
        try await db.fold()
        #expect(try await seed.int("SELECT quota FROM users WHERE id = $1", [user.id]) == 4 * chatHold)
        #expect(try await seed.int("SELECT remain_quota FROM tokens WHERE id = $1", [token.id]) == 14 * chatHold)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    /// Found by a review of the money paths: only the import wrote a channel's used_quota, so
    /// /api/channel/ showed new-api's figure for good (and 0 for a channel made in Tally).
    @Test(
        "a channel's used_quota counts what its requests cost: exact before the roll-up, added once by it, a resent batch never again"
    )
    func channelUsedQuota() async throws {
        let (db, seed, _, _, _, key) = try await Self.accountWithLimitedKey("fold-channel")
        let adminToken = try await seed.user("admin", role: .admin).token
        let channel = try await seed.channel(groups: ["default"], models: ["gpt-4o"])
        @Sendable func line(_ id: String, channel: Int64?) -> String {
            let field = channel.map { #","channel_id":\#($0)"# } ?? ""
            return
                #"{"request_id":"\#(id)","created_at":"\#(Gateway.now)","key":"\#(key)","model":"gpt-4o","kind":"chat","status":200\#(field),"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#
        }
        try await TestApp.build(db, { $0.settleIntervalMilliseconds = 0 }).test(.live) { client in
            let gateway = Gateway(client: client), api = API(client: client)
            @Sendable func usedQuota() async throws -> Int64? {
                let channels = try await api.get("/api/channel/?p=1&page_size=100", token: adminToken)
                let items = channels.dataObject["items"] as? [[String: Any]] ?? []
                return items.first { int64($0["id"]) == channel.id }.flatMap { int64($0["used_quota"]) }
            }
            let batch = ["a", "b", "c"].map { line("ch-\($0)", channel: channel.id) } + [line("ch-none", channel: nil)]
            for _ in 0..<2 {  // the second time a resend: every line a duplicate
                #expect(try await gateway.post("/logs", batch.joined(separator: "\n")).status == 200)
            }
            #expect(try await usedQuota() == 3 * chatHold, "pending, before any roll-up")
            try await db.fold()
            #expect(try await seed.int("SELECT count(*) FROM pending_channel_usage") == 0)
            #expect(try await seed.int("SELECT used_quota FROM channels WHERE id = $1", [channel.id]) == 3 * chatHold)
            #expect(try await usedQuota() == 3 * chatHold)
            #expect(try await gateway.post("/logs", line("ch-d", channel: channel.id)).status == 200)
            #expect(try await usedQuota() == 4 * chatHold)
            let one = try await api.get("/api/channel/\(channel.id)", token: adminToken)
            #expect(int64(one.dataObject["used_quota"]) == 4 * chatHold)
        }
        try await db.fold()
        #expect(try await seed.int("SELECT used_quota FROM channels WHERE id = $1", [channel.id]) == 4 * chatHold)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    @Test(
        "a batch that settles holds queues one pending charge per account: what its lines cost and what their holds return together"
    )
    func settledHoldsShareTheChargeRow() async throws {
        let (db, seed, user, _, token, key) = try await Self.accountWithLimitedKey("fold-settle-row")
        try await TestApp.build(db, { $0.settleIntervalMilliseconds = 0 }).test(.live) { client async throws in
            let gateway = Gateway(client: client)
            for index in 0..<3 {
                #expect(try await gateway.authorize(key: key, requestID: "held-\(index)").status == 200)
            }
            // Two holds settled at their cost, one line without a hold.
            let lines = ["held-0", "held-1", "unheld"].map {
                #"{"request_id":"\#($0)","created_at":"\#(Gateway.now)","key":"\#(key)","model":"gpt-4o","kind":"chat","status":200,"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#
            }
            #expect(try await gateway.post("/logs", lines.joined(separator: "\n")).status == 200)
        }
        let pending = try await seed.sql(
            "SELECT count(*), sum(quota), sum(requests), sum(user_returned), sum(token_returned) FROM pending_charges")[
                0]
        #expect(
            try (0..<5).map { try pending.decode($0, as: Int64.self) }
                == [1, 3 * chatHold, 3, 2 * chatHold, 2 * chatHold])
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
        try await db.fold()
        #expect(try await seed.int("SELECT quota FROM users WHERE id = $1", [user.id]) == 7 * chatHold)
        #expect(try await seed.int("SELECT count(*) FROM holds WHERE status = 'held'") == 1)
        #expect(try await seed.int("SELECT remain_quota FROM tokens WHERE id = $1", [token.id]) == 17 * chatHold)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }
}

extension IngestFoldHTTPTests {
    @Test(
        "a burst is settled whole soon after its last batch: the roll-up does not wait out its interval once batches pause"
    )
    func rollUpOncePaused() async throws {
        let db = try await TestDatabase.create("fold-pause")
        let seed = Seed(db: db)
        try await seed.prices(enforcementSheet)
        let (user, _) = try await seed.user(quota: 100 * chatHold)
        let (_, key) = try await seed.key(user: user.id, TokenDraft(name: "k", remainQuota: 0, unlimitedQuota: true))
        // An hour between roll-ups: only the pause can roll this batch up within the test.
        try await TestApp.build(
            db,
            {
                $0.settleIntervalMilliseconds = 20
                $0.rollUpIntervalSeconds = 3_600
            }
        ).test(.live) { client in
            let gateway = Gateway(client: client)
            let lines = (0..<5).map {
                #"{"request_id":"burst-\#($0)","created_at":"\#(Gateway.now)","key":"\#(key)","model":"gpt-4o","status":200,"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#
            }
            #expect(try await gateway.post("/logs", lines.joined(separator: "\n")).status == 200)
            let settled = try await waitUntil {
                try await seed.int(
                    """
                    SELECT (SELECT count(*) FROM pending_charges) + (SELECT count(*) FROM pending_usage)
                    """) == 0
            }
            #expect(settled, "balances folded and usage rolled up without waiting an hour")
            #expect(try await seed.int("SELECT sum(requests) FROM usage_daily WHERE user_id = $1", [user.id]) == 5)
            #expect(try await seed.int("SELECT used_quota FROM users WHERE id = $1", [user.id]) == 5 * chatHold)
        }
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }
}

/// Samples one account while the load runs: its exact balance never below 0 nor below what it
/// has reserved, `tally audit`'s checks clean at every sample, and folds seen happening.
final class BalanceWatch: Sendable {
    struct Observed: Sendable {
        var overdrawn: [String] = []
        var auditFailures: [String] = []
        var audits = 0
        var foldsSeen = 0
    }

    let db: TestDatabase
    let userID: Int64
    private let stopped = Atomic<Bool>(false)

    init(db: TestDatabase, userID: Int64) {
        self.db = db
        self.userID = userID
    }

    func stop() { stopped.store(true, ordering: .relaxed) }

    func run() async throws -> Observed {
        var observed = Observed()
        var lastFolded: Int64 = 0
        let auditor = Auditor(pool: db.pool)
        while !stopped.load(ordering: .relaxed) {
            let (quota, reserved, folded) = try await db.pool.withConnection { [userID] connection in
                let row = try connection.query(
                    """
                    SELECT b.quota, b.reserved, u.used_quota FROM user_balances b JOIN users u ON u.id = b.id WHERE b.id = $1
                    """, [userID])[0]
                return (
                    try row.decode(0, as: Int64.self), try row.decode(1, as: Int64.self),
                    try row.decode(2, as: Int64.self)
                )
            }
            if quota < 0 || quota < reserved { observed.overdrawn.append("quota \(quota), reserved \(reserved)") }
            if folded != lastFolded {
                observed.foldsSeen += 1
                lastFolded = folded
            }
            let violations = try await auditor.run()
            observed.audits += 1
            observed.auditFailures += violations.map(\.description)
            try await Task.sleep(for: .milliseconds(15))
        }
        return observed
    }
}
