import Foundation
import TallyCore
import TallyTestSupport
import Testing

/// DESIGN §11: "kill -9 at any moment loses no acknowledged batch and charges nothing twice".
/// Runs the real `tally serve`, so only from `ops/slow-tests/crash-recovery` (ops/test --slow).
///
/// `TALLY_CRASH_KILLS` (default 20, more until a killed server had committed a batch it did not
/// answer) and `TALLY_CRASH_SEED` (default: random, printed) replay a run.
@Suite("kill -9 under ingest load", .serialized, .enabled(if: crashTestsEnabled))
struct CrashRecoveryTests {
    static let initialQuota: Int64 = 1_000_000_000_000
    static let users = 50

    @Test(
        "tally serve killed with SIGKILL at random moments under 4 ingesting clients: nothing acknowledged lost, nothing charged twice, audit clean"
    )
    func killNine() async throws {
        let environment = ProcessInfo.processInfo.environment
        let kills = environment["TALLY_CRASH_KILLS"].flatMap(Int.init) ?? 20
        let seed = environment["TALLY_CRASH_SEED"].flatMap(UInt64.init) ?? UInt64.random(in: 1...UInt64(UInt32.max))
        print("crash test: seed \(seed) (TALLY_CRASH_SEED=\(seed) replays the same schedule), \(kills) kills")

        let db = try await TestDatabase.create("crash")
        try await db.prepareBilling(users: Self.users, quota: Self.initialQuota)
        let server = try ServerProcess(databaseURL: db.url, gatewaySecret: "crash-test-secret")

        var options = IngestLoad.Options()
        options.users = Self.users
        options.seed = seed
        let load = IngestLoad(baseURL: server.baseURL, secret: server.gatewaySecret, options: options)
        let loading = Switch()
        async let finished = load.run(while: { loading.isOn })

        var random = SplitMix64(seed: seed)
        var killsInFlight = 0
        var killsDone = 0
        var downtime: Duration = .zero
        let started = ContinuousClock.now
        do {
            // After the planned kills, more (up to three times as many in all) until some batch
            // was committed by a killed server before it answered: the resend that then finds
            // every line stored is the case exactly-once exists for, so the run must contain one.
            while killsDone < kills
                || (load.snapshot.batchesCommittedUnacknowledged == 0 && killsDone < 3 * kills)
            {
                killsDone += 1
                try await Task.sleep(for: .milliseconds(Int.random(in: 300...2500, using: &random)))
                if load.inFlight > 0 { killsInFlight += 1 }
                let killedAt = ContinuousClock.now
                await server.kill9()
                // Sometimes stay down a while, so clients also retry against a closed port.
                if Bool.random(using: &random) {
                    try await Task.sleep(for: .milliseconds(Int.random(in: 0...1500, using: &random)))
                }
                try await server.restart()
                downtime += ContinuousClock.now - killedAt
            }
            try await Task.sleep(for: .seconds(1))
        } catch {
            loading.turnOff()
            _ = await finished
            server.stop()
            throw error
        }
        loading.turnOff()
        let report = await finished
        server.stop()

        let figures = try await IngestInvariants.check(
            db, acked: report.acked, users: Self.users, initialQuota: Self.initialQuota)
        print(
            """
            crash test figures (seed \(seed)):
              kills survived          \(killsDone) (\(killsInFlight) with batches in flight), server down \(downtime) in total, run \(ContinuousClock.now - started)
              batches acknowledged    \(report.batchesAcked) (\(report.linesAcked) lines, \(figures.ackedLines) distinct)
              attempts retried        \(report.retries) (\(report.connectionErrors) connection errors, \(report.unavailable) 503s); \(report.batchesRetried) batches acknowledged after a retry, \(report.batchesCommittedUnacknowledged) of them committed by the killed server before it could answer
              lines lost              \(figures.linesLost)
              double charges          \(figures.usersChargedTwice) users, \(figures.unitsChargedTwice) units; lines stored twice \(figures.linesStoredTwice)
              tally audit             exit \(figures.auditStatus): \(figures.auditOutput.trimmingCharacters(in: .whitespacesAndNewlines))
            """)
        #expect(report.unexpected.isEmpty, "\(report.unexpected.prefix(10))")
        #expect(killsInFlight > 0)
        #expect(report.retries > 0)
        #expect(report.batchesCommittedUnacknowledged > 0)
        #expect(figures.ackedLines > 0)
        #expect(figures.linesLost == 0)
        #expect(figures.linesStoredTwice == 0)
        #expect(figures.linesNeverAcked == 0)
        #expect(figures.usersChargedTwice == 0)
        #expect(figures.usersMischarged.isEmpty, "\(figures.usersMischarged.prefix(10))")
        #expect(figures.auditStatus == 0, "\(figures.auditOutput)")
    }
}
