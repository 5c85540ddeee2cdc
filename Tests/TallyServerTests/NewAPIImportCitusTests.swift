import Foundation
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// `tally import new-api` and Citus (docs/import.md): the import runs on one PostgreSQL, and a
/// database it filled is distributed afterwards by `tally migrate`. Run by ops/slow-tests/citus,
/// skipped on plain PostgreSQL.
@Suite("tally import new-api on Citus", .enabled(if: TestCluster.isCitus))
struct NewAPIImportCitusTests {
    /// Found when the import suite first ran on the cluster: every run failed half-way with
    /// "relation import_users does not exist" (its staging tables are the coordinator's own).
    @Test("into a Citus database the import is refused before anything is written, saying what to do")
    func refusedOnCitus() async throws {
        let source = try await NewAPIImportTests.newAPIDatabase("newapicitusrefsrc")
        let tally = try await TestDatabase.create("newapicitusref")
        let run = try TallyBinary.run(
            ["import", "new-api", "--from", source.url, "--quiet"], databaseURL: tally.url, expecting: .failure)
        #expect(run.errorOutput.contains("runs on one PostgreSQL, not on a Citus cluster"), "\(run.errorOutput)")
        #expect(try await tally.scalar("SELECT count(*) FROM users") == 0)
    }

    @Test(
        "imported into one PostgreSQL, then given the extension: tally migrate distributes the imported rows, audit clean"
    )
    func importThenDistribute() async throws {
        let source = try await NewAPIImportTests.newAPIDatabase("newapicitussrc")
        let name = "tally_t_newapicitus_\(getpid())_\(UInt32.random(in: 0...UInt32.max))"
        let admin = PostgresPool(url: try TestCluster.maintenanceURL(), size: 1)
        try await admin.withConnection { try $0.execute("CREATE DATABASE \($0.quoteIdentifier(name))") }
        await admin.close()
        let url = TestCluster.url(database: name)
        try TallyBinary.run(["migrate"], databaseURL: url)
        let imported = try TallyBinary.run(
            ["import", "new-api", "--from", source.url, "--batch-size", "700", "--quiet"], databaseURL: url)
        #expect(imported.output.contains("users: 6 created"), "\(imported.output)")
        // The extension on every node and the workers registered, as an operator does.
        _ = try TestCluster.control("citus", "createdb", name)
        try TallyBinary.run(["migrate"], databaseURL: url)
        let pool = PostgresPool(url: url, size: 1)
        let (distributed, users) = try await pool.withConnection { connection in
            (
                try connection.query(
                    """
                    SELECT count(*) FROM pg_dist_partition
                    WHERE logicalrelid::text IN ('users', 'tokens', 'ledger', 'request_logs') AND partmethod = 'h'
                    """)[0].decode(0, as: Int.self),
                try connection.query("SELECT count(*) FROM users")[0].decode(0, as: Int.self)
            )
        }
        await pool.close()
        #expect(distributed == 4)
        #expect(users == 6)
        try TallyBinary.run(["audit"], databaseURL: url)
    }
}
