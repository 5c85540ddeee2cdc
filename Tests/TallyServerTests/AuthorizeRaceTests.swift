import Foundation
import Synchronization
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// No overdraft under any interleaving: 10,000 concurrent authorizations of cost c against an
/// account holding 100·c, through real `tally serve` processes.
@Suite("Enforcement: concurrent authorizations never overdraw")
struct AuthorizeRaceTests {
    static let attempts = 10_000
    static let affordable = 100
    static let concurrency = 64

    @Test(
        "10,000 concurrent holds of c on 100·c: exactly 100 succeed, the balance is exact after settlement",
        arguments: [1, 2, 3], ["sync", "async"])
    func exactlyAffordable(serverCount: Int, holdCommit: String) async throws {
        // A limited key with room for 150: the user's balance is what binds.
        let account = try await Account(
            "authorize-race", quota: Int64(Self.affordable) * chatHold,
            key: TokenDraft(name: "k", remainQuota: 150 * chatHold, unlimitedQuota: false))
        let (db, seed, key) = (account.db, account.seed, account.key)
        let servers = try (0..<serverCount).map { _ in
            try ServerProcess(databaseURL: db.url, environment: ["TALLY_HOLD_COMMIT": holdCommit])
        }
        let headers = ["Authorization": "Bearer \(servers[0].gatewaySecret)", "Content-Type": "application/json"]

        let granted = try await withThrowingTaskGroup(of: [String].self) { group in
            for worker in 0..<Self.concurrency {
                group.addTask {
                    var mine: [String] = []
                    for attempt in stride(from: worker, to: Self.attempts, by: Self.concurrency) {
                        let requestID = "race-\(attempt)"
                        if try await Self.heldOrRefused(requestID, key: key, servers[attempt % servers.count]) {
                            mine.append(requestID)
                        }
                    }
                    return mine
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(granted.count == Self.affordable)
        #expect(
            try await seed.int("SELECT reserved FROM user_balances WHERE id = $1", [account.userID]) == Int64(
                Self.affordable) * chatHold)
        // Answered from memory (async), a hold reaches PostgreSQL within milliseconds; a gateway
        // settles much later (after the upstream call), so wait for the journal here too.
        let journaled = Date().addingTimeInterval(5)
        while try await seed.int("SELECT count(*) FROM holds WHERE status = 'held'") < Self.affordable,
            Date() < journaled
        {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(try await seed.openHolds(user: account.userID) == Int64(Self.affordable) * chatHold)

        // Settle every hold at exactly its estimate, through both servers.
        let lines = granted.map {
            #"{"request_id":"\#($0)","created_at":"\#(Gateway.now)","key":"\#(key)","model":"gpt-4o","kind":"chat","status":200,"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#
        }
        for (index, chunk) in stride(from: 0, to: lines.count, by: 25).map({
            Array(lines[$0..<min($0 + 25, lines.count)])
        }).enumerated() {
            let answer = try await HTTP.sendAsync(
                "POST", "\(servers[index % servers.count].baseURL)/gateway/v1/logs",
                headers: headers, body: Data(chunk.joined(separator: "\n").utf8))
            #expect(answer.status == 200, "\(answer.text)")
        }
        #expect(try await seed.int("SELECT quota FROM user_balances WHERE id = $1", [account.userID]) == 0)
        #expect(try await seed.int("SELECT reserved FROM user_balances WHERE id = $1", [account.userID]) == 0)
        #expect(
            try await seed.int("SELECT remain_quota FROM token_balances WHERE user_id = $1", [account.userID]) == 50
                * chatHold)
        #expect(try await seed.int("SELECT count(*) FROM holds WHERE status = 'settled'") == Int64(Self.affordable))
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
        servers.forEach { $0.stop() }
        // Stopped, each server gave its leases back.
        #expect(try await seed.int("SELECT reserved FROM token_balances WHERE user_id = $1", [account.userID]) == 0)
        #expect(try await seed.int("SELECT count(*) FROM tally_instances") == 0)
    }

    @Test(
        """
        concurrent holds on many accounts through two instances (on Citus, accounts on both workers; one and four \
        journal transactions in flight): each account grants exactly what its balance covers, and the books balance
        """)
    func spreadAccounts() async throws {
        let db = try await TestDatabase.create("authorize-spread")
        let seed = Seed(db: db)
        try await seed.prices(enforcementSheet)
        _ = try await seed.channel(groups: ["default"], models: ["gpt-4o"])
        let affordable = 30, attempts = 40
        var accounts: [(user: Int64, key: String)] = []
        var spread = false
        while !spread {
            let user = try await seed.user(quota: Int64(affordable) * chatHold).user.id
            accounts.append((user, try await seed.key(user: user).key))
            let nodes = try await Self.workersHolding(accounts.map(\.user), seed: seed)
            spread = accounts.count >= 8 && nodes == Self.workers
        }
        let keys = accounts.map(\.key)
        // One journal transaction in flight on one instance, four on the other (the defaults
        // are 2 on a small host, 4 on a large one): whatever the machine, both ends are run.
        let servers = try [1, 4].map {
            try ServerProcess(databaseURL: db.url, environment: ["TALLY_JOURNAL_CONCURRENCY": "\($0)"])
        }
        let requests = keys.indices.flatMap { account in (0..<attempts).map { (account, $0) } }.shuffled()
        let granted = try await withThrowingTaskGroup(of: [Int].self) { group in
            for worker in 0..<32 {
                group.addTask {
                    var mine: [Int] = []
                    for index in stride(from: worker, to: requests.count, by: 32) {
                        let (account, attempt) = requests[index]
                        let requestID = "spread-\(account)-\(attempt)"
                        if try await Self.heldOrRefused(requestID, key: keys[account], servers[index % servers.count]) {
                            mine.append(account)
                        }
                    }
                    return mine
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        for (index, account) in accounts.enumerated() {
            #expect(granted.filter { $0 == index }.count == affordable, "user \(account.user)")
            #expect(try await seed.openHolds(user: account.user) == Int64(affordable) * chatHold)
        }
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
        servers.forEach { $0.stop() }
        // Stopped, each server gave its leases back: only the holds stay reserved.
        #expect(try await seed.int("SELECT count(*) FROM tally_instances") == 0)
        #expect(try await seed.int("SELECT sum(reserved) FROM users") == Int64(accounts.count * affordable) * chatHold)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    /// Authorizes a chat hold through `server`: true when held; else the answer must be the
    /// user's balance refusing it.
    static func heldOrRefused(_ requestID: String, key: String, _ server: ServerProcess) async throws -> Bool {
        let body =
            #"{"request_id":"\#(requestID)","key":"\#(key)","model":"gpt-4o","estimate":{"prompt_tokens":1000,"max_tokens":500}}"#
        let headers = ["Authorization": "Bearer \(server.gatewaySecret)", "Content-Type": "application/json"]
        let answer = try await HTTP.sendAsync(
            "POST", "\(server.baseURL)/gateway/v1/authorize", headers: headers, body: Data(body.utf8))
        if answer.status == 200 { return true }
        #expect(answer.status == 403 && answer.text.contains("insufficient_user_quota"), "\(answer.text)")
        return false
    }

    /// How many database nodes hold the accounts: the workers on Citus, else one.
    static func workersHolding(_ users: [Int64], seed: Seed) async throws -> Int64 {
        guard TestCluster.isCitus, !users.isEmpty else { return 1 }
        return try await seed.int(
            """
            SELECT count(DISTINCT n.nodeport) FROM unnest($1::bigint[]) AS u(id)
            JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('users', u.id)
            JOIN pg_dist_node n ON n.groupid = p.groupid
            """, [PostgresArray.integers(users)])
    }

    /// The nodes the accounts of a test must span: both workers of the test cluster on Citus.
    static let workers: Int64 = TestCluster.isCitus ? 2 : 1

    @Test(
        "an instance killed with kill -9 loses its leases to no one: another instance returns them once it stops renewing"
    )
    func killedInstanceLeasesReturn() async throws {
        let account = try await Account("authorize-kill", quota: 10 * chatHold)
        let (db, seed) = (account.db, account.seed)
        let doomed = try ServerProcess(databaseURL: db.url)
        // One hold; the rest of the balance sits in the doomed instance's lease.
        #expect(try await account.authorize(doomed, "before-kill") == 200)
        #expect(
            try await seed.int("SELECT reserved FROM user_balances WHERE id = $1", [account.userID]) == 10 * chatHold)
        await doomed.kill9()

        let survivor = try ServerProcess(databaseURL: db.url)
        defer { survivor.stop() }
        // Until the dead registration expires (15 s) and its grace passes (5 s in sync mode), its
        // lease is still reserved: the survivor cannot overdraw by using it.
        #expect(try await account.authorize(survivor, "while-leased") == 403)
        let deadline = Date().addingTimeInterval(40)
        while try await seed.int("SELECT count(*) FROM tally_instances") > 1, Date() < deadline {
            try await Task.sleep(for: .milliseconds(500))
        }
        // Reaped: the lease went back; the hold stays until it is settled or expires.
        #expect(
            try await seed.int("SELECT count(*) FROM user_leases l JOIN tally_instances i ON i.id = l.instance_id") <= 1
        )
        #expect(try await seed.openHolds(user: account.userID) == chatHold)
        for index in 0..<9 { #expect(try await account.authorize(survivor, "after-\(index)") == 200) }
        #expect(try await account.authorize(survivor, "one-too-many") == 403)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    @Test("an instance that runs short gets the idle leases of another back at once, instead of refusing")
    func leasesHandedBack() async throws {
        let account = try await Account("authorize-handback", quota: 10 * chatHold)
        let (db, seed) = (account.db, account.seed)
        let first = try ServerProcess(databaseURL: db.url), second = try ServerProcess(databaseURL: db.url)
        defer { first.stop(); second.stop() }
        // The first instance leases the whole balance for one hold...
        #expect(try await account.authorize(first, "a-1") == 200)
        #expect(
            try await seed.int("SELECT sum(amount) FROM user_leases WHERE user_id = $1", [account.userID]) == 9
                * chatHold)
        // ...the second, short, asks for it back and is served; the two share the balance exactly.
        for index in 0..<5 { #expect(try await account.authorize(second, "b-\(index)") == 200) }
        for index in 2...5 { #expect(try await account.authorize(first, "a-\(index)") == 200) }
        #expect(try await account.authorize(first, "a-over") == 403)
        #expect(try await account.authorize(second, "b-over") == 403)
        #expect(try await seed.openHolds(user: account.userID) == 10 * chatHold)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    @Test(
        "kill -9 under authorize load: every hold answered is in PostgreSQL, and the books balance once the dead lease is reaped"
    )
    func killedUnderLoad() async throws {
        let account = try await Account(
            "authorize-kill-load", quota: 1_000_000 * chatHold,
            key: TokenDraft(name: "k", remainQuota: 1_000_000 * chatHold, unlimitedQuota: false))
        let (db, seed) = (account.db, account.seed)
        let doomed = try ServerProcess(databaseURL: db.url)
        // Before the kill every answer must be 200 (the balance covers them all); after it,
        // errors are what a killed server gives. `killing` turns on just before the signal.
        let killing = Switch(false), tally = LoadTally()
        let answered = try await withThrowingTaskGroup(of: [String].self) { group in
            for worker in 0..<32 {
                group.addTask {
                    var held: [String] = []
                    for attempt in 0..<10_000 {
                        let requestID = "load-\(worker)-\(attempt)"
                        let status: Int
                        do { status = try await account.authorize(doomed, requestID, timeout: 30) } catch {
                            if !killing.isOn { tally.unexpected("\(requestID): \(error)") }
                            break
                        }
                        tally.count(status)
                        guard status == 200 else {
                            if !killing.isOn { tally.unexpected("\(requestID): status \(status)") }
                            break
                        }
                        held.append(requestID)
                    }
                    return held
                }
            }
            group.addTask {
                // Killed under load: once a few hundred holds were answered, however slow the machine.
                let underLoad = try await waitUntil(timeout: .seconds(120)) { tally.statuses[200, default: 0] >= 300 }
                if !underLoad { tally.unexpected("only \(tally.statuses) before the kill deadline") }
                killing.turnOn()
                await doomed.kill9()
                return []
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        print("kill under load: answers \(tally.statuses), \(answered.count) holds answered")
        #expect(tally.unexpectedBeforeKill.isEmpty, "\(tally.unexpectedBeforeKill.prefix(10))")
        #expect(answered.count >= 300, "the load ran before the kill")
        // Sync mode answers after the journal commit: nothing answered is missing.
        #expect(
            try await seed.int(
                "SELECT count(*) FROM holds WHERE request_id = ANY($1::text[])",
                [PostgresArray.text(answered)]) == Int64(answered.count))
        // The books balance at once (leases included)…
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
        // …and once another instance has reaped the dead one, only the holds are reserved.
        let survivor = try ServerProcess(databaseURL: db.url)
        defer { survivor.stop() }
        let deadline = Date().addingTimeInterval(40)
        while try await seed.int("SELECT count(*) FROM tally_instances") > 1, Date() < deadline {
            try await Task.sleep(for: .milliseconds(500))
        }
        #expect(try await seed.int("SELECT count(*) FROM tally_instances") == 1)
        #expect(
            try await seed.int("SELECT reserved FROM user_balances WHERE id = $1", [account.userID])
                == (try await seed.openHolds(user: account.userID)))
        #expect(
            try await seed.int("SELECT reserved FROM token_balances WHERE user_id = $1", [account.userID])
                == (try await seed.openHolds(user: account.userID, tokenOnly: true)))
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    /// What the clients of a load saw: statuses, and failures that came before the kill.
    final class LoadTally: Sendable {
        private let state = Mutex<(statuses: [Int: Int], unexpected: [String])>(([:], []))

        var statuses: [Int: Int] { state.withLock { $0.statuses } }
        var unexpectedBeforeKill: [String] { state.withLock { $0.unexpected } }
        func count(_ status: Int) { state.withLock { $0.statuses[status, default: 0] += 1 } }
        func unexpected(_ what: String) { state.withLock { $0.unexpected.append(what) } }
    }

    /// A fresh database with the enforcement price sheet, a gpt-4o channel, and one user with
    /// `quota` and a key (`draft`, else the default key).
    struct Account {
        let db: TestDatabase
        let seed: Seed
        let userID: Int64
        let key: String

        init(_ name: String, quota: Int64, key draft: TokenDraft? = nil) async throws {
            db = try await TestDatabase.create(name)
            seed = Seed(db: db)
            try await seed.prices(enforcementSheet)
            _ = try await seed.channel(groups: ["default"], models: ["gpt-4o"])
            userID = try await seed.user(quota: quota).user.id
            if let draft {
                key = try await seed.key(user: userID, draft).key
            } else {
                key = try await seed.key(user: userID).key
            }
        }

        /// One authorization of a chat hold (`chatHold` units); returns the HTTP status.
        func authorize(_ server: ServerProcess, _ requestID: String, timeout: TimeInterval = 30) async throws -> Int {
            let body =
                #"{"request_id":"\#(requestID)","key":"\#(key)","model":"gpt-4o","estimate":{"prompt_tokens":1000,"max_tokens":500}}"#
            let headers = ["Authorization": "Bearer \(server.gatewaySecret)", "Content-Type": "application/json"]
            return try await HTTP.sendAsync(
                "POST", "\(server.baseURL)/gateway/v1/authorize", headers: headers,
                body: Data(body.utf8), timeout: timeout
            ).status
        }
    }
}
