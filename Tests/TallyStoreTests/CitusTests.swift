import Foundation
import Synchronization
import TallyCore
import TallyPostgres
import TallyTestSupport
import Testing

@testable import TallyStore

/// The schema on a real 3-node Citus cluster (coordinator + 2 workers): run by
/// ops/slow-tests/citus with TALLY_TEST_CITUS=1, skipped on plain PostgreSQL.
@Suite("Citus: distribution and single-shard account queries", .enabled(if: TestCluster.isCitus))
struct CitusTests {
    static func seeded() async throws -> TestDatabase {
        let db = try await TestDatabase.shared("citus")
        try await db.prepareBilling(users: 40)
        return db
    }

    @Test("migrate distributes the account tables by account, co-located, and the catalogue as reference tables")
    func layout() async throws {
        let db = try await Self.seeded()
        let placed = try await db.pool.withConnection { connection in
            try connection.query(
                """
                SELECT logicalrelid::regclass::text, partmethod::text, colocationid,
                       coalesce(column_to_column_name(logicalrelid, partkey), '')
                FROM pg_dist_partition
                """
            ).map { row in
                (
                    try row.decode(0, as: String.self),
                    (
                        method: try row.decode(1, as: String.self), colocation: try row.decode(2, as: Int64.self),
                        column: try row.decode(3, as: String.self)
                    )
                )
            }
        }
        let tables = Dictionary(uniqueKeysWithValues: placed)
        let users = try #require(tables["users"])
        #expect(users.method == "h" && users.column == "id")
        for table in [
            "tokens", "user_leases", "pending_charges", "request_logs", "ledger", "usage_daily",
            "pending_usage",
        ] {
            #expect(tables[table]?.method == "h" && tables[table]?.column == "user_id", "\(table)")
            #expect(tables[table]?.colocation == users.colocation, "\(table) is not co-located with users")
        }
        #expect(tables["account_lookup"]?.column == "lookup")
        #expect(tables["account_lookup"]?.colocation != users.colocation)
        for table in ["groups", "channels", "price_versions", "tally_instances", "webhook_settings", "redemptions"] {
            #expect(tables[table]?.method == "n", "\(table) is not a reference table")
        }
        // A second migrate has nothing left to distribute.
        #expect(try await db.pool.withConnection { try CitusLayout.distribute(on: $0) }.isEmpty)
    }

    @Test("the seeded accounts are spread over both workers")
    func spread() async throws {
        let db = try await Self.seeded()
        let nodes = try await db.scalar(
            """
            SELECT count(DISTINCT p.nodeport) FROM users u
            JOIN pg_dist_placement pl ON pl.shardid = get_shard_id_for_distribution_column('users', u.id)
            JOIN pg_dist_node p ON p.groupid = pl.groupid
            """)
        #expect(nodes == 2)
    }

    @Test("queries of one account, and a key's owner in account_lookup, run on one shard")
    func singleShard() async throws {
        let db = try await Self.seeded()
        let user = try await db.scalar("SELECT min(id) FROM users")
        // Accounts that share the first one's shard: a batch of them is one shard's work.
        let sameShard = try await db.pool.withConnection { connection in
            try connection.query(
                """
                SELECT array_agg(id ORDER BY id)::text FROM users
                WHERE get_shard_id_for_distribution_column('users', id)
                    = get_shard_id_for_distribution_column('users', $1::bigint)
                """, [user])[0].decode(0, as: String.self)
        }
        let keyHash = try await db.pool.withConnection { connection in
            try connection.query("SELECT encode(key_hash, 'hex') FROM tokens WHERE user_id = $1", [user])[0]
                .decode(0, as: String.self)
        }
        let queries: [(String, [any PostgresEncodable])] = [
            ("SELECT quota, reserved, used_quota FROM users WHERE id = $1", [user]),
            ("SELECT id, remain_quota FROM tokens WHERE user_id = $1 AND deleted_at IS NULL ORDER BY id DESC", [user]),
            (
                "SELECT user_id, token_id FROM account_lookup WHERE lookup = decode($1, 'hex') AND kind = 'key'",
                [keyHash]
            ),
            ("SELECT 1 FROM users WHERE id = ANY ($1::bigint[]) ORDER BY id FOR NO KEY UPDATE", [sameShard]),
            ("UPDATE users SET reserved = reserved WHERE id = ANY ($1::bigint[])", [sameShard]),
            ("SELECT amount FROM user_leases WHERE user_id = $1", [user]),
            ("SELECT quota, reserved FROM user_balances WHERE id = $1", [user]),
            ("SELECT remain_quota FROM token_balances WHERE user_id = $1", [user]),
        ]
        for (query, parameters) in queries {
            try await Self.expectSingleShard(query, parameters, on: db)
        }
    }

    /// The plan's task counts: one per statement Citus runs (more in a plan with subplans).
    static func taskCounts(_ query: String, _ parameters: [any PostgresEncodable], on db: TestDatabase) async throws
        -> [Int]
    {
        let plan = try await db.pool.withConnection { connection in
            try connection.query("EXPLAIN " + query, parameters).map { try $0.decode(0, as: String.self) }
        }
        let counts = plan.compactMap { line in
            line.range(of: "Task Count: ").flatMap { Int(line[$0.upperBound...].prefix { $0.isNumber }) }
        }
        if counts.isEmpty { Issue.record("no Citus plan for \(query)\n\(plan.joined(separator: "\n"))") }
        return counts
    }

    static func expectSingleShard(
        _ query: String, _ parameters: [any PostgresEncodable], on db: TestDatabase,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let counts = try await taskCounts(query, parameters, on: db)
        #expect(
            !counts.isEmpty && counts.allSatisfy { $0 == 1 }, "not single-shard (tasks \(counts)): \(query)",
            sourceLocation: sourceLocation)
    }

    @Test(
        """
        a batch's work per account, a user's export and statement, and the System API's reads of one account \
        run on one shard; the month's export by model fans out
        """)
    func accountWorkSingleShard() async throws {
        let db = try await Self.seeded()
        let (user, token) = try await db.pool.withConnection { connection in
            let row = try connection.query("SELECT user_id, id FROM tokens ORDER BY user_id, id LIMIT 1")[0]
            return (try row.decode(0, as: Int64.self), try row.decode(1, as: Int64.self))
        }
        let month = try #require(UsageMonth(year: 2026, month: 11))
        let firstDay = month.firstDay, nextMonth = month.adding(months: 1).firstDay
        let partition = try await db.pool.withConnection { try UsageExporter.keptPartition(month, on: $0) }
        let byModel = { (userID: Int64?) in
            let export = try UsageExport(month: month, by: [.model], format: .csv, userID: userID)
            return RollupQuery(export: export, timeZone: nil).sql
        }
        let batchWork: [(String, [any PostgresEncodable])] = [
            // What a batch appends per account (its COPY rows are routed one by one, by account) …
            (
                """
                INSERT INTO request_logs (request_id, created_at, user_id, token_id, model, "group", kind, status, quota)
                VALUES ('explain', '2026-11-10T12:00:00Z', $1, $2, 'gpt-4o', 'default', 'chat', 200, 1)
                ON CONFLICT (user_id, created_at, request_id) DO NOTHING
                """, [user, token]
            ),
            (
                """
                INSERT INTO ledger (user_id, token_id, kind, amount, requests, batch_id, tid, usage_month)
                VALUES ($1, $2, 'charge', -1, 1, 1, 'explain', '2026-11-01')
                """, [user, token]
            ),
            // … what the fold and the roll-up do per account …
            (
                "DELETE FROM pending_charges WHERE user_id = ANY ($1::bigint[]) RETURNING *",
                [PostgresArray.integers([user])]
            ),
            ("DELETE FROM pending_usage WHERE user_id = $1 RETURNING *", [user]),
            (
                """
                INSERT INTO usage_daily AS d (day, user_id, token_id, model, "group", kind, requests, quota)
                VALUES ('2026-11-10', $1, $2, 'gpt-4o', 'default', 'chat', 1, 1)
                ON CONFLICT (day, user_id, token_id, model, "group", kind)
                DO UPDATE SET requests = d.requests + 1, quota = d.quota + 1
                """, [user, token]
            ),
            // … a user's export, raw and by model, and statement …
            (try byModel(user), []),
            ("SELECT * FROM \(partition) WHERE user_id = $1", [user]),
            (StatementRepository.balances.sql, [user, firstDay]),
            (StatementRepository.credits.sql, [user, firstDay]),
            (StatementRepository.models.sql, [user, firstDay, nextMonth]),
            // … and the System API's reads of one account: the user, their keys, their log pages.
            ("SELECT \(PostgresUserRepository.columns(account: "$1")) FROM users WHERE id = $1", [user]),
            ("SELECT \(TokenRepository.columns(account: "$1")) FROM tokens t WHERE t.user_id = $1", [user]),
            ("\(LogRepository.requestSelect) WHERE l.user_id = $1 ORDER BY l.created_at DESC LIMIT 10", [user]),
            ("\(LogRepository.creditSelect) WHERE g.user_id = $1 ORDER BY g.at DESC LIMIT 10", [user]),
        ]
        for (query, parameters) in batchWork {
            try await Self.expectSingleShard(query, parameters, on: db)
        }
        // The month's export by model reads every account: one task per shard.
        let shards = try await db.scalar(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'usage_daily'::regclass")
        #expect(shards > 1)
        #expect(try await Self.taskCounts(try byModel(nil), [], on: db).contains(Int(shards)))
    }

    @Test("a batch's charges on accounts of both workers show at once and fold into the balances exactly once")
    func fold() async throws {
        let db = try await TestDatabase.create("citus_fold")
        try await db.prepareBilling(users: 8, quota: 1_000_000)
        let accounts = try await db.pool.withConnection { connection in
            try connection.query(
                """
                SELECT u.id, t.id FROM users u JOIN tokens t ON t.user_id = u.id
                WHERE u.username LIKE 'synthetic-%' ORDER BY u.id
                """
            )
            .map { (user: try $0.decode(0, as: Int64.self), token: try $0.decode(1, as: Int64.self)) }
        }
        let lines = accounts.enumerated().map { index, account in
            PricedLine(
                requestID: "citus-\(index)", createdAt: Date(), userID: account.user, tokenID: account.token,
                channelID: nil, model: "gpt-4o", group: "default", kind: .chat, status: 200, isStream: false,
                durationMs: 10, ip: nil, tid: nil, error: nil, usage: Usage(promptTokens: 10, completionTokens: 5),
                quota: 1_000 + Int64(index), priceVersionID: 1)
        }
        _ = try await PostgresIngestRepository(pool: db.pool).store(
            lines, rejects: [], totalLines: lines.count,
            tid: TraceID.generate(), source: "test")
        let users = PostgresUserRepository(pool: db.pool)
        func quotas() async throws -> [Int64] {
            var quotas: [Int64] = []
            for account in accounts { quotas.append(try #require(try await users.find(id: account.user)).quota) }
            return quotas
        }
        let expected = lines.map { 1_000_000 - $0.quota }
        #expect(try await quotas() == expected, "the readers add what is pending")
        #expect(try await db.scalar("SELECT count(*) FROM pending_charges") == Int64(accounts.count))
        let folded = try await db.scalar("SELECT tally_fold(NULL, false)")
        #expect(folded == Int64(accounts.count))
        #expect(try await db.scalar("SELECT count(*) FROM pending_charges") == 0)
        #expect(try await quotas() == expected, "folded once: the balances moved by what was pending")
        #expect(try await db.scalar("SELECT tally_fold(NULL, false)") == 0)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    @Test(
        """
        authorize's SQL on Citus (migration 0022): leases, the lookup's lease, the journal, the release and the \
        hand-back of accounts on both workers run every statement on one shard, and the books balance
        """)
    func authorizePathSingleShard() async throws {
        let db = try await TestDatabase.create("citus_authorize")
        try await db.prepareBilling(users: 8, quota: 1_000_000)
        let accounts = try await db.pool.withConnection { connection in
            try connection.query("UPDATE tokens SET unlimited_quota = false, remain_quota = 500000")
            return try connection.query(
                "SELECT u.id, t.id FROM users u JOIN tokens t ON t.user_id = u.id WHERE u.username LIKE 'synthetic-%'"
            ).map { (user: try $0.decode(0, as: Int64.self), token: try $0.decode(1, as: Int64.self)) }
        }
        #expect(accounts.count == 8)
        let leases = PostgresLeaseRepository(pool: db.pool)
        try await leases.register(instance: "citus-a", ttlSeconds: 60, reclaimAfterSeconds: 60)
        let users = PostgresArray.integers(accounts.map(\.user)), tokens = PostgresArray.integers(accounts.map(\.token))
        let units = { @Sendable (amount: Int64) in PostgresArray.integers(accounts.map { _ in amount }) }
        try await db.pool.withConnection { connection in
            // Citus raises an error for any statement it runs as more than one task.
            try connection.execute("SET citus.multi_task_query_log_level = 'error'")
            defer { _ = try? connection.execute("RESET citus.multi_task_query_log_level") }
            let leased = try connection.query(
                "SELECT sum(granted)::bigint FROM tally_lease('citus-a', $1::bigint[], $2::bigint[], $3::bigint[], $2::bigint[])",
                [users, units(10_000), tokens])
            #expect(try leased[0].decode(0, as: Int64.self) == 16 * 10_000)
            let onLookup = try connection.query(
                """
                SELECT sum(granted)::bigint FROM tally_lease_on_lookup('citus-a', $1::bigint[], $2::bigint[],
                                                                        $3::bigint[], $2::bigint[])
                """, [users, units(5_000), tokens])
            #expect(try onLookup[0].decode(0, as: Int64.self) == 16 * 5_000)
            let holdIDs = PostgresArray.integers(accounts.indices.map { Int64($0 + 1) })
            let journaled = try connection.query(
                """
                SELECT hold_status FROM tally_journal_holds('citus-a', $1::bigint[], $2::text[], $3::bigint[],
                    $4::bigint[], $5::bigint[], $6::text[], $6::text[], $7::boolean[], 60)
                """,
                [
                    holdIDs, PostgresArray.text(accounts.indices.map { "citus-hold-\($0)" }), users, tokens,
                    units(1_000), PostgresArray.text(accounts.map { _ in "gpt-4o" }),
                    "{" + accounts.map { _ in "t" }.joined(separator: ",") + "}",
                ])
            #expect(try journaled.map { try $0.decode(0, as: String.self) } == accounts.map { _ in "held" })
            let released = try connection.query(
                "SELECT amount FROM tally_close_holds($1::bigint[], 'released')", [holdIDs])
            #expect(released.count == accounts.count)
            try connection.query(
                "SELECT tally_return_leases('citus-a', 1, 1, $1::bigint[], $2::bigint[], $3::bigint[], $2::bigint[])",
                [users, units(14_000), tokens])
        }
        #expect(
            try await db.scalar("SELECT count(*) FROM user_leases") + db.scalar("SELECT count(*) FROM token_leases")
                == 0)
        #expect(
            try await db.scalar("SELECT sum(reserved) FROM users") + db.scalar("SELECT sum(reserved) FROM tokens") == 0)
        // The reaper reads a dead instance's lease rows on every shard (rare, off the request path),
        // then hands them back account by account.
        try await leases.register(instance: "citus-b", ttlSeconds: 60, reclaimAfterSeconds: 60)
        _ = try await leases.lease(instance: "citus-b", wants: accounts.map { AccountUnits(.user($0.user), 3_000) })
        #expect(try await db.scalar("SELECT sum(reserved) FROM users") == 8 * 3_000)
        #expect(try await db.scalar("SELECT tally_reap_instances('citus-b')") == 1)
        #expect(try await db.scalar("SELECT sum(reserved) FROM users") == 0)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }
}

extension CitusTests {
    @Test(
        "a cold key's lookup on Citus (AccessDirectory): its owner, the key and the lookup's lease, each statement on one shard"
    )
    func keyLookupSingleShard() async throws {
        let db = try await TestDatabase.create("citus_lookup")
        try await db.prepareBilling(users: 6, quota: 1_000_000)
        let keys = try await db.pool.withConnection { connection in
            try connection.query("SELECT encode(key_hash, 'hex'), id, user_id FROM tokens ORDER BY id").map {
                (
                    hash: try $0.decode(0, as: String.self), token: try $0.decode(1, as: Int64.self),
                    user: try $0.decode(2, as: Int64.self)
                )
            }
        }
        let leases = PostgresLeaseRepository(pool: db.pool)
        try await leases.register(instance: "citus-lookup", ttlSeconds: 60, reclaimAfterSeconds: 60)
        // Every new connection to this database raises on a statement Citus runs as more than one task.
        try await db.pool.withConnection { connection in
            try connection.execute("ALTER DATABASE \(db.name) SET citus.multi_task_query_log_level = 'error'")
        }
        let strict = PostgresPool(url: db.url, size: 1)
        let directory = AccessDirectory(pool: strict)
        let granted = Mutex<[LeaseGrant]>([])
        for key in keys {
            let lease = LookupLease(instance: "citus-lookup", want: 1_000) { _, grants in
                granted.withLock { $0 += grants }
            }
            let access = try await directory.key(try #require(SecretHash(hex: key.hash)), leasing: lease)
            #expect(access?.tokenID == key.token)
            #expect(access?.userID == key.user)
        }
        #expect(try await directory.key(SecretHash(of: "sk-no-such-key")) == nil)
        let users = granted.withLock { $0 }.filter { if case .user = $0.account { true } else { false } }
        #expect(users.map { $0.granted } == keys.map { _ in Int64(1_000) })
        #expect(try await db.scalar("SELECT sum(amount) FROM user_leases") == Int64(keys.count) * 1_000)
    }
}
