import Foundation
import TallyTestSupport
import Testing

/// A Citus worker's PostgreSQL killed with SIGKILL while `tally serve` ingests batches into the
/// 3-node cluster (issue 19): the gateway clients resend every batch that did not get a 200, and
/// afterwards every acknowledged line is stored once, nothing is charged twice, `tally audit` is
/// clean. Run by ops/slow-tests/citus (TALLY_TEST_CITUS=1, TALLY_CRASH_TESTS=1).
@Suite("Citus: a worker killed mid-ingest", .serialized, .enabled(if: TestCluster.isCitus && crashTestsEnabled))
struct CitusWorkerKillTests {
    static let initialQuota: Int64 = 1_000_000_000_000
    static let users = 40

    @Test(
        "kill -9 of worker1's PostgreSQL under 4 ingesting clients, then a restart: nothing lost, nothing charged twice"
    )
    func killWorker() async throws {
        let db = try await TestDatabase.create("citus_kill")
        try await db.prepareBilling(users: Self.users, quota: Self.initialQuota)
        #expect(
            try await db.scalar(
                """
                SELECT count(DISTINCT p.nodeport) FROM users u
                JOIN pg_dist_placement pl ON pl.shardid = get_shard_id_for_distribution_column('users', u.id)
                JOIN pg_dist_node p ON p.groupid = pl.groupid WHERE u.username LIKE 'synthetic-%'
                """) == 2, "the accounts are on both workers")
        let server = try ServerProcess(databaseURL: db.url, gatewaySecret: "citus-kill-secret")
        defer { server.stop() }
        var options = IngestLoad.Options()
        options.users = Self.users
        options.linesPerBatch = 20...200
        let load = IngestLoad(baseURL: server.baseURL, secret: server.gatewaySecret, options: options)
        let loading = Switch()
        async let finished = load.run(while: { loading.isOn })

        var inFlightAtKill = 0
        var failuresDuringOutage = 0
        do {
            // Batches are flowing before the kill …
            #expect(try await waitUntil(timeout: .seconds(120)) { load.snapshot.batchesAcked >= 10 })
            inFlightAtKill = load.inFlight
            let before = Self.failures(load.snapshot)
            try Self.killWorker("worker1")
            // … fail while the worker is down (a worker's shards are unavailable) …
            #expect(try await waitUntil(timeout: .seconds(60)) { Self.failures(load.snapshot) > before })
            failuresDuringOutage = Self.failures(load.snapshot) - before
            _ = try TestCluster.control("citus", "node", "worker1", "start")
            // … and are stored again once it is back.
            let ackedAfterRestart = load.snapshot.batchesAcked
            #expect(
                try await waitUntil(timeout: .seconds(180)) { load.snapshot.batchesAcked >= ackedAfterRestart + 20 })
        } catch {
            loading.turnOff()
            _ = await finished
            throw error
        }
        loading.turnOff()
        let report = await finished
        server.stop()
        // A new pool: the coordinator sessions of the old one kept connections to the killed worker.
        let checked = db.reopened()
        // Two-phase commits the kill interrupted are finished before the rows are counted (the
        // maintenance daemon does it within citus.recover_2pc_interval anyway).
        _ = try await checked.scalar("SELECT recover_prepared_transactions()")

        let figures = try await IngestInvariants.check(
            checked, acked: report.acked, users: Self.users,
            initialQuota: Self.initialQuota)
        print(
            """
            citus worker kill: \(inFlightAtKill) batches in flight at the kill, \(failuresDuringOutage) failed answers \
            while worker1 was down; \(report.batchesAcked) batches (\(report.linesAcked) lines) acknowledged, \
            \(report.retries) resends, \(report.batchesRetried) batches acknowledged after a resend; lost \
            \(figures.linesLost), stored twice \(figures.linesStoredTwice), users charged twice \(figures.usersChargedTwice); \
            audit exit \(figures.auditStatus)
            """)
        #expect(report.unexpected.isEmpty, "\(report.unexpected.prefix(10))")
        #expect(inFlightAtKill > 0, "the kill found no batch in flight")
        #expect(report.batchesRetried > 0)
        #expect(figures.isClean, "\(figures)")
    }

    /// Answers other than 200 and failed connections so far.
    static func failures(_ report: IngestLoad.Report) -> Int {
        report.unavailable + report.connectionErrors + report.unexpected.count
    }

    /// SIGKILL to the node's postmaster (its backends exit when they notice it gone; the restart
    /// runs crash recovery).
    static func killWorker(_ node: String) throws {
        let home =
            ProcessInfo.processInfo.environment["TALLY_HOME"]
            ?? TestCluster.repositoryRoot.appendingPathComponent(".tally/test").path
        let text = try String(contentsOfFile: "\(home)/citus-nodes/\(node)/pg/data/postmaster.pid", encoding: .utf8)
        let pid = try #require(text.split(separator: "\n").first.flatMap { Int32($0) })
        #expect(kill(pid, SIGKILL) == 0)
    }
}
