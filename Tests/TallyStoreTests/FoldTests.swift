import Foundation
import TallyCore
import TallyPostgres
import TallyTestSupport
import Testing

@testable import TallyStore

/// The fold (migration 0010): pending charges reach balances and rollups exactly once, whatever
/// dies when, and every reader is exact in between.
@Suite("ingest fold")
struct FoldTests {
    static let initialQuota: Int64 = 1_000_000_000

    /// Synthetic users 1…n: (user id, token id) in user order.
    static func accounts(_ db: TestDatabase, users: Int) async throws -> [(user: Int64, token: Int64)] {
        try await db.prepareBilling(users: users, quota: initialQuota)
        return try await db.pool.withConnection { connection in
            try connection.query(
                """
                SELECT u.id, t.id FROM users u JOIN tokens t ON t.user_id = u.id
                WHERE u.username LIKE 'synthetic-%' ORDER BY u.id
                """
            ).map { (try $0.decode(0, as: Int64.self), try $0.decode(1, as: Int64.self)) }
        }
    }

    static func line(_ id: String, _ account: (user: Int64, token: Int64), quota: Int64, at: Date = Date())
        -> PricedLine
    {
        PricedLine(
            requestID: id, createdAt: at, userID: account.user, tokenID: account.token, channelID: nil,
            model: "gpt-4o", group: "default", kind: .chat, status: 200, isStream: false, durationMs: 10, ip: nil,
            tid: nil, error: nil, usage: Usage(promptTokens: 1000, completionTokens: 500), quota: quota,
            priceVersionID: 1)
    }

    static func store(_ lines: [PricedLine], on db: TestDatabase) async throws {
        _ = try await PostgresIngestRepository(pool: db.pool).store(
            lines, rejects: [], totalLines: lines.count,
            tid: TraceID.generate(), source: "test")
    }

    @Test(
        "a fold that dies before its commit changes nothing; batches append meanwhile without waiting for its locks; the next fold applies each charge once"
    )
    func foldKilledMidway() async throws {
        let db = try await TestDatabase.create("fold-kill")
        let accounts = try await Self.accounts(db, users: 3)
        try await Self.store(
            accounts.enumerated().map { Self.line("first-\($0)", $1, quota: 1_000 * Int64($0 + 1)) }, on: db)

        // A settler's fold, applied but not committed: it holds the accounts' rows locked.
        let settler = try await TestSession.open(db.url)
        let (pid, folded) = try await settler.run { connection in
            try connection.execute("BEGIN")
            return (
                try connection.query("SELECT pg_backend_pid()")[0].decode(0, as: Int64.self),
                try connection.query("SELECT tally_fold(NULL, false)")[0].decode(0, as: Int.self)
            )
        }
        #expect(folded == 3)

        // Appending locks no account row: a batch for the same accounts commits meanwhile.
        let appended = Task {
            try await Self.store(accounts.map { Self.line("second-\($0.user)", $0, quota: 500) }, on: db)
        }
        let deadline = Date().addingTimeInterval(15)
        while try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'second-%'") < 3,
            Date() < deadline
        {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(
            try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'second-%'") == 3,
            "a batch waited for the fold's account locks")
        // Every reader is exact although the fold is in flight.
        #expect(
            try await db.scalar("SELECT quota FROM user_balances WHERE id = $1", [accounts[2].user]) == Self
                .initialQuota - 3_500)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)

        // The settler dies (kill -9 of its server, or of its backend): its transaction is gone.
        _ = try await db.scalar("SELECT count(*) FROM (SELECT pg_terminate_backend($1::int)) t", [pid])
        try await appended.value
        #expect(
            try await db.scalar(
                "SELECT sum(quota) FROM users WHERE id = ANY ($1::bigint[])",
                [PostgresArray.integers(accounts.map(\.user))]) == 3 * Self.initialQuota)
        #expect(try await db.scalar("SELECT count(*) FROM pending_charges") == 6)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)

        try await db.fold()
        try await db.fold()
        for (index, account) in accounts.enumerated() {
            let charged = 1_000 * Int64(index + 1) + 500
            #expect(
                try await db.scalar("SELECT quota FROM users WHERE id = $1", [account.user]) == Self.initialQuota
                    - charged)
            #expect(try await db.scalar("SELECT used_quota FROM tokens WHERE id = $1", [account.token]) == charged)
            #expect(try await db.scalar("SELECT request_count FROM users WHERE id = $1", [account.user]) == 2)
            #expect(
                try await db.scalar("SELECT sum(quota) FROM usage_daily WHERE user_id = $1", [account.user]) == charged)
        }
        #expect(
            try await db.scalar("SELECT count(*) FROM pending_charges")
                + (try await db.scalar("SELECT count(*) FROM pending_usage")) == 0)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    @Test("tally audit holds at every instant while batches append and two settlers fold side by side")
    func auditWhileIngesting() async throws {
        let db = try await TestDatabase.create("fold-audit")
        let accounts = try await Self.accounts(db, users: 20)
        let settler = Settler(pool: db.pool, shards: 4, accountsPerFold: 7)
        let writers = 3, batches = 20, linesPerBatch = 50
        let done = Switch()

        async let audits: (runs: Int, violations: [String]) = {
            var runs = 0, violations: [String] = []
            while done.isOn {
                violations += try await Auditor(pool: db.pool).run().map(\.description)
                runs += 1
            }
            return (runs, violations)
        }()
        // Two settlers: balances folded and usage rolled up side by side.
        async let folds: Int = {
            var folded = 0
            while done.isOn { folded += try await settler.foldBalances() + (try await settler.rollUp()) }
            return folded
        }()
        async let moreFolds: Int = {
            var folded = 0
            while done.isOn { folded += try await settler.foldBalances() + (try await settler.rollUp()) }
            return folded
        }()
        let charged = try await withThrowingTaskGroup(of: Int64.self) { group in
            for writer in 0..<writers {
                group.addTask {
                    var charged: Int64 = 0
                    for batch in 0..<batches {
                        let lines = (0..<linesPerBatch).map { index in
                            Self.line(
                                "w\(writer)-b\(batch)-\(index)",
                                accounts[(writer * 7 + batch * 3 + index) % accounts.count],
                                quota: Int64(1 + (index * 37 + batch) % 500))
                        }
                        try await Self.store(lines, on: db)
                        charged += lines.reduce(0) { $0 + $1.quota }
                    }
                    return charged
                }
            }
            return try await group.reduce(0, +)
        }
        done.turnOff()
        let (audited, folded, foldedToo) = try await (audits, folds, moreFolds)
        #expect(audited.violations.isEmpty, "\(audited.violations.prefix(5))")
        #expect(audited.runs > 3)
        #expect(folded + foldedToo > 0, "the settlers folded while batches appended")
        try await db.fold()
        #expect(try await db.scalar("SELECT sum(used_quota) FROM users") == charged)
        #expect(
            try await db.scalar("SELECT sum(request_count) FROM tokens") == Int64(writers * batches * linesPerBatch))
        #expect(try await db.scalar("SELECT sum(quota) FROM usage_daily") == charged)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    /// Found by a review: a fold after a credit took the credit for part of the balance its
    /// charges left, announcing an account the top-up left no lower as low, from a wrong balance.
    @Test("a credit folds the account's pending charges first: balance.low is announced from the balance they left")
    func creditFoldsFirst() async throws {
        let db = try await TestDatabase.create("fold-credit")
        let accounts = try await Self.accounts(db, users: 2)
        _ = try await WebhookRepository(pool: db.pool).add(
            url: "http://127.0.0.1:9/hook", secret: nil, events: [], by: .cli)
        // The default threshold is 500,000: the first account is low already, the second not.
        for (account, quota) in zip(accounts, [Int64(450_000), 600_000]) {
            _ = try await db.scalar("UPDATE users SET quota = $2 WHERE id = $1 RETURNING 0", [account.user, quota])
        }
        try await Self.store(
            [Self.line("credit-1", accounts[0], quota: 50_000), Self.line("credit-2", accounts[1], quota: 150_000)],
            on: db)
        let balances = BalanceRepository(pool: db.pool)
        for (account, amount) in zip(accounts, [Int64(100_000), 30_000]) {
            _ = try await balances.topUp(
                userID: account.user, amount: amount, reason: "between a charge and its fold", idempotencyKey: nil,
                by: .cli)
        }
        try await db.fold()
        let events = try await db.pool.withConnection { connection in
            try connection.query(
                """
                SELECT (payload->>'user_id')::bigint, (payload->>'previous_quota')::bigint, (payload->>'quota')::bigint
                FROM webhook_outbox WHERE type = 'balance.low' ORDER BY id
                """
            ).map { row in try (0..<3).map { try row.decode($0, as: Int64.self) } }
        }
        // The first account's charge crossed nothing; the second's took 600,000 to 450,000.
        #expect(events == [[accounts[1].user, 600_000, 450_000]])
        #expect(
            try await db.scalar(
                "SELECT sum(quota) FROM users WHERE id = ANY ($1::bigint[])",
                [PostgresArray.integers(accounts.map(\.user))]) == Int64(500_000 + 480_000))
    }

    @Test("leases grant from quota − reserved − pending: charges not folded yet are not lent out again")
    func leasesSeePending() async throws {
        let db = try await TestDatabase.create("fold-lease")
        let account = try await Self.accounts(db, users: 1)[0]
        _ = try await db.scalar("UPDATE users SET quota = 10000 WHERE id = $1 RETURNING 0", [account.user])
        _ = try await db.scalar(
            """
            UPDATE tokens SET unlimited_quota = false, remain_quota = 8000 WHERE id = $1 RETURNING 0
            """, [account.token])
        try await Self.store([Self.line("lease-1", account, quota: 6_000)], on: db)

        let leases = PostgresLeaseRepository(pool: db.pool)
        try await leases.register(instance: "fold-test", ttlSeconds: 60, reclaimAfterSeconds: 0)
        let grants = try await leases.lease(
            instance: "fold-test",
            wants: [
                AccountUnits(.user(account.user), 10_000),
                AccountUnits(.token(account.token), 10_000),
            ])
        #expect(grants.first { $0.account == .user(account.user) }?.granted == 4_000)
        #expect(grants.first { $0.account == .token(account.token) }?.granted == 2_000)

        // The key's exact remainder reaches 0: it is exhausted, folded or not.
        try await Self.store([Self.line("lease-2", account, quota: 2_500)], on: db)
        let exhausted = try await leases.lease(instance: "fold-test", wants: [AccountUnits(.token(account.token), 1)])
        #expect(exhausted.first?.state == .exhausted)
        try await db.fold()
        let after = try await leases.lease(instance: "fold-test", wants: [AccountUnits(.user(account.user), 10_000)])
        #expect(after.first?.granted == 0)
    }

    @Test(
        "the cold-key lease taken with the lookup (migration 0011) grants as tally_lease does: pending charges and returns count"
    )
    func lookupLeaseSeesPending() async throws {
        let db = try await TestDatabase.create("fold-lookup-lease")
        let account = try await Self.accounts(db, users: 1)[0]
        _ = try await db.scalar(
            "UPDATE users SET quota = 10000, reserved = 3000 WHERE id = $1 RETURNING 0", [account.user])
        try await Self.store([Self.line("lookup-1", account, quota: 6_000)], on: db)
        // A settled hold's reservation, returned by the batch and not folded yet.
        _ = try await db.scalar(
            """
            INSERT INTO pending_charges (user_id, token_id, batch_id, quota, requests, user_returned, token_returned)
            VALUES ($1, $2, 0, 0, 0, 1000, 0) RETURNING 0
            """, [account.user, account.token])
        try await PostgresLeaseRepository(pool: db.pool).register(
            instance: "fold-lookup", ttlSeconds: 60,
            reclaimAfterSeconds: 0)
        let lookupLease = """
            SELECT granted FROM tally_lease_on_lookup('fold-lookup', ARRAY[$1::bigint], ARRAY[10000::bigint],
                                                      ARRAY[]::bigint[], ARRAY[]::bigint[]) WHERE kind = 'user'
            """
        // quota − reserved − pending charges + pending returns = 10,000 − 3,000 − 6,000 + 1,000.
        #expect(try await db.scalar(lookupLease, [account.user]) == 2_000)
        #expect(try await db.scalar(lookupLease, [account.user]) == 0, "the first grant is reserved now")
    }

    @Test(
        "a cold key's lookup never waits for a fold: an account whose row another transaction holds gets no lease from it (migration 0021)"
    )
    func lookupLeaseSkipsLockedAccounts() async throws {
        let db = try await TestDatabase.create("fold-lookup-skip")
        let account = try await Self.accounts(db, users: 1)[0]
        _ = try await db.scalar(
            "UPDATE tokens SET unlimited_quota = false, remain_quota = 10000 WHERE id = $1 RETURNING 0", [account.token]
        )
        try await PostgresLeaseRepository(pool: db.pool).register(
            instance: "fold-skip", ttlSeconds: 60, reclaimAfterSeconds: 0)
        let lookupLease = """
            SELECT kind || ' ' || granted FROM tally_lease_on_lookup('fold-skip', ARRAY[$1::bigint], ARRAY[1000::bigint],
                                                                     ARRAY[$2::bigint], ARRAY[1000::bigint])
            ORDER BY kind
            """
        // A fold holds the user's row (as tally_fold does for up to 5,000 accounts at a time).
        let fold = try await TestSession.open(db.url)
        try await fold.run { connection in
            try connection.execute("BEGIN")
            _ = try connection.query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", [account.user])
        }
        let lookup = try await TestSession.open(db.url)
        let whileFolding = try await lookup.run { connection in
            // Waiting for the fold's lock would end here, as a failure, instead of hanging.
            try connection.execute("SET statement_timeout = '5s'")
            return try connection.query(lookupLease, [account.user, account.token]).map {
                try $0.decode(0, as: String.self)
            }
        }
        try await fold.run { try $0.execute("ROLLBACK") }
        #expect(whileFolding == ["token 1000"], "the key's token is leased, its user is left to a refill")
        let afterwards = try await lookup.run { connection in
            try connection.query(lookupLease, [account.user, account.token]).map { try $0.decode(0, as: String.self) }
        }
        #expect(afterwards == ["token 1000", "user 1000"])
    }

    /// Found by a review: the fold took the first accounts of the queue in index order and went
    /// on only while a fold came back full, so one of them locked at every tick (a busy account
    /// is leased often) left the accounts past the first `accountsPerFold` unfolded for good.
    /// Going round the queue (0032), two ticks fold the rest (two accounts a fold, the first
    /// account locked); a random start would need luck for that.
    @Test("an account locked at every tick does not keep the rest of the queue from folding (migration 0032)")
    func foldPickRotates() async throws {
        let db = try await TestDatabase.create("fold-rotates")
        let accounts = try await Self.accounts(db, users: 5)
        let settler = Settler(pool: db.pool, accountsPerFold: 2)
        try await Self.store(
            accounts.enumerated().map { Self.line("first-\($0.offset)", $0.element, quota: 10) }, on: db)
        let blocker = try await TestSession.open(db.url)
        try await blocker.run { connection in
            try connection.execute("BEGIN")
            _ = try connection.query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", [accounts[0].user])
        }
        let rest = PostgresArray.integers(accounts.dropFirst(2).map(\.user))
        let pendingOfRest = "SELECT count(*) FROM pending_charges WHERE user_id = ANY ($1::bigint[])"
        for tick in 0..<3 {
            guard try await db.scalar(pendingOfRest, [rest]) > 0 else { break }
            // The second account is charged again before every tick, as a busy one is.
            try await Self.store([Self.line("busy-\(tick)", accounts[1], quota: 10)], on: db)
            try await settler.foldBalances()
        }
        try await blocker.run { try $0.execute("ROLLBACK") }
        #expect(try await db.scalar(pendingOfRest, [rest]) == 0)
        try await settler.foldAll()
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    @Test(
        "the fold plans every call for its own accounts (migration 0018: a cached generic plan compares each pending row with every account) and never compiles them with JIT (0023)"
    )
    func foldPlansPerCall() async throws {
        let db = try await TestDatabase.create("fold-plans")
        let settings = try await db.pool.withConnection { connection in
            try connection.query(
                """
                SELECT DISTINCT p.proname, array_to_string(p.proconfig, ',') FROM pg_proc p
                WHERE p.proname IN ('tally_fold', 'tally_settle', 'tally_roll_up') ORDER BY p.proname
                """
            ).map { "\(try $0.decode(0, as: String.self)): \(try $0.decodeOptional(1, as: String.self) ?? "")" }
        }
        #expect(
            settings == [
                "tally_fold: plan_cache_mode=force_custom_plan,jit=off",
                "tally_roll_up: jit=off",
                "tally_settle: plan_cache_mode=force_custom_plan,jit=off",
            ])
    }

    @Test(
        "a batch's charges: one ledger row per user × key × month (none for a free group), usage per day × model × group × kind"
    )
    func batchCharges() throws {
        let a = (user: Int64(1), token: Int64(11)), b = (user: Int64(2), token: Int64(22))
        let october = try #require(PostgresTimestamp.parse("2026-10-31 23:59:59.5+00"))
        let november = try #require(PostgresTimestamp.parse("2026-11-01 00:00:00+00"))
        var video = Self.line("v", a, quota: 7, at: november)
        video.usage = Usage(videoSeconds: try ExactDecimal("2.5"))
        video.model = "veo-3"
        var moreVideo = video
        moreVideo.usage.videoSeconds = try ExactDecimal("0.75")
        var failed = Self.line("f", b, quota: 0, at: november)
        failed.status = 500
        let charges = BatchCharges([
            Self.line("1", a, quota: 100, at: october), Self.line("2", a, quota: 50, at: november),
            video, moreVideo, failed,
        ])
        #expect(
            charges.ledgerCharges.map {
                "\($0.key.userID)/\($0.key.tokenID)/\($0.key.month): \($0.charge.quota) in \($0.charge.requests)"
            }
                == ["1/11/2026-10-01: 100 in 1", "1/11/2026-11-01: 64 in 3"])
        let usage = charges.pendingUsage.sorted { $0.key < $1.key }
        #expect(
            charges.pendingCharges.map {
                "\($0.key.userID)/\($0.key.tokenID): \($0.charge.quota) in \($0.charge.requests)"
            }
                == ["1/11: 164 in 4", "2/22: 0 in 1"])
        #expect(charges.pendingCharges[0].charge.lastAt == november)
        #expect(
            usage.map { "\($0.key.userID) \($0.key.day) \($0.key.model)" }
                == ["1 2026-10-31 gpt-4o", "1 2026-11-01 gpt-4o", "1 2026-11-01 veo-3", "2 2026-11-01 gpt-4o"])
        #expect(usage[2].totals.videoSeconds == (try ExactDecimal("3.25")))
        #expect(usage[2].totals.requests == 2)
        #expect(usage[2].totals.quota == 14)
        #expect(usage[3].totals.failedRequests == 1)
    }

    @Test("a batch's pending charges: one row per account, carrying what its settled holds return")
    func pendingRowsCarryTheReturns() throws {
        let a = (user: Int64(1), token: Int64(11)), b = (user: Int64(2), token: Int64(22))
        let charges = BatchCharges([
            Self.line("1", a, quota: 100), Self.line("2", a, quota: 50), Self.line("3", b, quota: 7),
        ])
        let rows = charges.pendingRows(returning: [
            .init(userID: 1, tokenID: 11): .init(user: 400, token: 0),
            .init(userID: 2, tokenID: 21): .init(user: 90, token: 90),
        ])
        #expect(
            rows.map {
                "\($0.key.userID)/\($0.key.tokenID): \($0.charge?.quota ?? -1) in \($0.charge?.requests ?? -1), "
                    + "returns \($0.returned.user)/\($0.returned.token)"
            }
                == [
                    "1/11: 150 in 2, returns 400/0", "2/21: -1 in -1, returns 90/90", "2/22: 7 in 1, returns 0/0",
                ])
        #expect(charges.pendingRows(returning: [:]).map(\.key) == charges.pendingCharges.map(\.key))
    }
}
