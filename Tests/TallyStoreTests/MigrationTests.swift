import Foundation
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

@Suite("migrations and partitions")
struct MigrationTests {
    @Test("migrations apply once, a second run applies nothing, and concurrent runs do not collide")
    func migrateTwiceAndConcurrently() async throws {
        let db = try await TestDatabase.create("migrate", migrate: false)
        let all = try Migration.bundled()
        // Numbers are reserved per issue, so a gap may stand until the other issues land.
        #expect(all.map(\.version) == Array(Set(all.map(\.version))).sorted())
        #expect(all.first?.version == 1)
        try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<3 { group.addTask { try await Migrator(pool: db.pool).migrate().count } }
            var applied = 0
            for try await count in group { applied += count }
            #expect(applied == all.count)
        }
        #expect(try await Migrator(pool: db.pool).migrate().isEmpty)
        let recorded = try await db.pool.withConnection {
            try $0.query("SELECT version FROM schema_migrations ORDER BY version").map {
                try $0.decode(0, as: Int.self)
            }
        }
        #expect(recorded == all.map(\.version))
    }

    /// A rolling deploy (ops/deploy/README.md) runs the previous version's instances against the
    /// new schema until each is restarted: what they call must still answer. These are the calls
    /// whose form a migration replaced (0032's fold, 0033's return), in the form those instances
    /// send them.
    @Test("the previous version's calls still answer after the migrations that replaced them (0035)")
    func previousCallersStillAnswer() async throws {
        let db = try await TestDatabase.create("previous-callers")
        try await db.prepareBilling(users: 2)
        let (user, token) = try await db.syntheticAccount(1)
        let leases = PostgresLeaseRepository(pool: db.pool)
        try await leases.register(instance: "previous", ttlSeconds: 60, reclaimAfterSeconds: 0)
        _ = try await leases.lease(instance: "previous", wants: [AccountUnits(.user(user), 3_000)])
        let reserved = "SELECT reserved FROM users WHERE id = $1"
        #expect(try await db.scalar(reserved, [user]) == 3_000)
        _ = try await db.optionalScalar(
            "SELECT 0::bigint FROM tally_return_leases('previous', ARRAY[$1::bigint], ARRAY[1000::bigint], '{}', '{}')",
            [user])
        #expect(try await db.scalar(reserved, [user]) == 2_000)
        // The old fold folds: a stored line's pending charge goes into the balance.
        _ = try await PostgresIngestRepository(pool: db.pool).store(
            [IngestRaceTests.line("previous-fold", userID: user, tokenID: token, quota: 10)], rejects: [],
            totalLines: 1, tid: TraceID.generate(), source: "test")
        let pending = "SELECT count(*) FROM pending_charges WHERE user_id = $1"
        #expect(try await db.scalar(pending, [user]) > 0)
        #expect(try await db.scalar("SELECT tally_settle(1, 100)::bigint") == 1)
        #expect(try await db.scalar(pending, [user]) == 0)
        #expect(try await leases.retire(instance: "previous", patience: .seconds(5)))
        #expect(try await db.scalar(reserved, [user]) == 0)
    }

    /// Found by a review: rejected lines were kept whole, API keys included, for any admin to read.
    @Test("migration 0029 masks the API keys of rejected lines stored before it, as KeyRedaction masks new ones")
    func rejectsMaskedByMigration() async throws {
        let db = try await TestDatabase.create("rejectsmask", migrate: false)
        try await Migrator(pool: db.pool).migrate(try Migration.bundled().filter { $0.version < 29 })
        let key = Secrets.newAPIKey()
        let lines = [
            #"{"request_id":"r1","key":"\#(key)","model":"no-such-model"}"#,
            #"{"key" : "\#(key.dropFirst(3))","meta":{"authorization":"Bearer \#(key)"},"note":"again \#(key)"}"#,
            "not json, key=\(key)", #"{"key":"short"}"#,
        ]
        try await db.pool.withConnection { connection in
            for (number, line) in lines.enumerated() {
                try connection.query(
                    "INSERT INTO ingest_rejects (batch_tid, line, code, message, raw) VALUES ('t', $1, 'c', 'm', $2)",
                    [number, line])
            }
        }
        try await Migrator(pool: db.pool).migrate()
        let stored = try await db.pool.withConnection { connection in
            try connection.query("SELECT raw FROM ingest_rejects ORDER BY line").map {
                try $0.decode(0, as: String.self)
            }
        }
        #expect(stored == lines.map { String(decoding: KeyRedaction.masked(Array($0.utf8)), as: UTF8.self) })
        #expect(!stored.contains { $0.contains(key.dropFirst(3).prefix(20)) })
    }

    @Test("every table of the design exists")
    func designTablesExist() async throws {
        let db = try await TestDatabase.shared("store")
        let tables = try await db.pool.withConnection { connection in
            Set(
                try connection.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").map {
                    try $0.decode(0, as: String.self)
                })
        }
        for table in [
            "users", "tokens", "groups", "channels", "price_versions", "holds", "ingest_rejects",
            "ledger", "usage_daily", "redemptions", "audit_log", "schema_migrations",
        ] {
            #expect(tables.contains(table), "missing table \(table)")
        }
        let partitioned = try await db.pool.withConnection {
            try $0.query("SELECT relkind FROM pg_class WHERE relname = 'request_logs'")[0].text(0)
        }
        #expect(partitioned == "p")
    }

    @Test("the partition helper creates exactly the months asked for, idempotently")
    func partitionHelper() async throws {
        let db = try await TestDatabase.shared("store")
        let migrator = Migrator(pool: db.pool)
        let start = try #require(PostgresTimestamp.parse("2030-11-15 08:00:00+00"))
        #expect(try await migrator.createLogPartitions(from: start, months: 3) == 3)
        #expect(try await migrator.createLogPartitions(from: start, months: 3) == 0)
        let names = try await db.pool.withConnection { connection in
            try connection.query(
                """
                SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'request_logs'::regclass AND c.relname LIKE 'request_logs_y203%' ORDER BY 1
                """
            ).map { try $0.decode(0, as: String.self) }
        }
        #expect(names == ["request_logs_y2030m11", "request_logs_y2030m12", "request_logs_y2031m01"])
        // A row at the last instant of December lands in December, the first of January in January.
        let placed = try await db.pool.withConnection { connection in
            try connection.query(
                """
                INSERT INTO request_logs (request_id, created_at, user_id, token_id, model, "group", kind, status, quota)
                VALUES ('a', '2030-12-31 23:59:59.999999+00', 1, 1, 'm', 'default', 'chat', 200, 0),
                       ('b', '2031-01-01 00:00:00+00', 1, 1, 'm', 'default', 'chat', 200, 0)
                """)
            return try connection.query(
                "SELECT request_id, tableoid::regclass::text FROM request_logs WHERE request_id IN ('a','b') ORDER BY 1"
            )
            .map { "\($0.text(0)!)=\($0.text(1)!)" }
        }
        #expect(placed == ["a=request_logs_y2030m12", "b=request_logs_y2031m01"])
    }

    /// Found by a review of the operator's side: a migration's lock request on a table queued
    /// every query of it behind an open reader (an export streaming for minutes on an older
    /// instance still serving), so ingest stalled for the reader's length.
    @Test(
        "a migration behind an open reader gives way: new queries wait about its lock timeout, and it applies once the reader ends"
    )
    func migrationGivesWay() async throws {
        let db = try await TestDatabase.create("migration-lock")
        let export = try await TestSession.open(db.url)
        try await export.run { connection in
            try connection.execute("BEGIN")
            try connection.query("SELECT count(*) FROM ledger")
        }
        let migration = Migration(
            version: 9_001, name: "9001_ledger_note", sql: "ALTER TABLE ledger ADD COLUMN note_for_test text")
        let migrator = Migrator(pool: db.pool, lockTimeout: "300ms", briefTries: 1_000)
        let applying = Task { try await migrator.migrate([migration]) }
        #expect(
            try await waitUntil(timeout: .seconds(10)) {
                try await db.scalar("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'ledger'::regclass")
                    == 1
            }, "the migration's lock request never queued behind the open reader")
        // A batch's read of the ledger: without the lock timeout it would wait for the reader.
        let batch = try await TestSession.open(db.url)
        try await batch.run { try $0.execute("SET statement_timeout = '5s'") }
        let waited = try await ContinuousClock().measure {
            _ = try await batch.run { try $0.query("SELECT count(*) FROM ledger").count }
        }
        #expect(waited < .seconds(3))
        try await export.run { try $0.execute("COMMIT") }
        #expect(try await applying.value.map(\.version) == [9_001])
        #expect(
            try await db.scalar(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'ledger' AND column_name = 'note_for_test'"
            ) == 1)
    }

    @Test("a partition created while a batch's transaction is open: new readers wait at most about its lock timeout")
    func partitionBehindOpenTransaction() async throws {
        let db = try await TestDatabase.create("partition-lock")
        // A streamed batch, open for the length of its upload, holds request_logs.
        let batch = try await TestSession.open(db.url)
        try await batch.run { connection in
            try connection.execute("BEGIN")
            try connection.query("SELECT count(*) FROM request_logs")
        }
        let start = try #require(PostgresTimestamp.parse("2032-03-10 00:00:00+00"))
        let migrator = Migrator(pool: db.pool)
        let created = Task { try await migrator.createLogPartitions(from: start, months: 1) }
        #expect(
            try await waitUntil(timeout: .seconds(10)) {
                try await db.scalar(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'request_logs'::regclass")
                    == 1
            }, "the partition's lock request never queued behind the open transaction")
        // A new batch's read of request_logs queues behind that lock request, which gives up
        // after its lock timeout (1 s): without one, the read would wait for the open batch.
        let reader = try await TestSession.open(db.url)
        try await reader.run { try $0.execute("SET statement_timeout = '5s'") }
        let waited = try await ContinuousClock().measure {
            _ = try await reader.run { try $0.query("SELECT count(*) FROM request_logs").count }
        }
        #expect(waited < .seconds(3))
        try await batch.run { try $0.execute("COMMIT") }
        #expect(try await created.value == 1)
    }
}
