import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

@Suite("migration 0012: import_map.linked")
struct ImportMapMigrationTests {
    @Test("a link made before 0012 is recognised by the user.create audit entry of the account Tally made itself")
    func backfillsLinks() async throws {
        let db = try await TestDatabase.create("importmap0012", migrate: false)
        try await Migrator(pool: db.pool).migrate(try Migration.bundled().filter { $0.version < 12 })
        // As the code of that time wrote them (today's also writes tables from later migrations):
        // the account Tally made has its user.create audit entry, the imported one none.
        try await db.pool.withConnection { connection in
            try connection.execute(
                """
                INSERT INTO users (id, username, role) VALUES (400, 'root', 100), (500, 'imported', 1);
                INSERT INTO audit_log (actor, action, target) VALUES ('cli', 'user.create', 'user:400');
                INSERT INTO import_map (source, kind, source_id, tally_id)
                VALUES ('new-api', 'user', 1, 400), ('new-api', 'user', 2, 500), ('new-api', 'token', 1, 400);
                """)
        }
        try await Migrator(pool: db.pool).migrate()
        let rows = try await db.pool.withConnection { connection in
            try connection.query(
                """
                SELECT kind, source_id, linked, access_token_hash IS NULL FROM import_map ORDER BY kind, source_id
                """
            ).map {
                "\(try $0.decode(0, as: String.self)) \(try $0.decode(1, as: Int64.self)) "
                    + "\(try $0.decode(2, as: Bool.self)) \(try $0.decode(3, as: Bool.self))"
            }
        }
        #expect(rows == ["token 1 false true", "user 1 true true", "user 2 false true"])
    }
}
