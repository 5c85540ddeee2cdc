import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

@Suite("migration 0037: imported codes' stops recorded")
struct CodeStopsMigrationTests {
    /// Found by a review of the import fix: codes an earlier import brought in disabled kept no
    /// record of their stop, so their admin maker could still enable them.
    @Test(
        "a disabled code without a status change on record gets the command line's stop; recorded and enabled ones keep theirs"
    )
    func backfillsStops() async throws {
        let db = try await TestDatabase.create("codestops0037", migrate: false)
        try await Migrator(pool: db.pool).migrate(try Migration.bundled().filter { $0.version < 37 })
        try await db.pool.withConnection { connection in
            try connection.execute(
                """
                INSERT INTO users (id, username, role) VALUES (400, 'admin', 10);
                INSERT INTO redemptions (id, name, code_hash, code_last6, quota, status, created_by) VALUES
                    (1, 'imported stopped', '\\x01', 'aaaaaa', 100, 2, 400),
                    (2, 'stopped by its admin', '\\x02', 'bbbbbb', 100, 2, 400),
                    (3, 'usable', '\\x03', 'cccccc', 100, 1, 400),
                    (4, 'used', '\\x04', 'dddddd', 100, 3, 400);
                INSERT INTO audit_log (actor_id, actor, action, target) VALUES (400, 'admin', 'redemption.disable', 'redemption:2');
                """)
        }
        try await Migrator(pool: db.pool).migrate()
        let stops = try await db.pool.withConnection { connection in
            try connection.query(
                "SELECT target, coalesce(actor_id, 0) FROM audit_log WHERE action = 'redemption.disable' ORDER BY target"
            ).map { "\(try $0.decode(0, as: String.self)) \(try $0.decode(1, as: Int64.self))" }
        }
        #expect(stops == ["redemption:1 0", "redemption:2 400"])
        let balances = BalanceRepository(pool: db.pool)
        await #expect(throws: PermissionDenied.self) {
            _ = try await balances.setRedemptionStatus(
                id: 1, enabled: true, by: Actor(userID: 400, name: "admin", tid: nil))
        }
    }
}
