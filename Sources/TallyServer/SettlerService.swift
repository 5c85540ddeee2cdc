import Logging
import Metrics
import ServiceLifecycle
import TallyStore

/// Folds what committed ingest batches still owe into balances, holds' reservations and
/// rollups (``Settler``), every `interval`. Safe on every instance at once: each tick claims
/// shards of accounts no other settler holds, and a fold is exactly once by construction.
/// On graceful shutdown it folds one last time, so a stopped fleet leaves little pending.
struct SettlerService: Service {
    let settler: Settler
    let interval: Duration
    let logger: Logger

    static let foldedCounter = Counter(label: "tally_settle_accounts_total")
    static let tickTimer = Metrics.Timer(label: "tally_settle_tick_duration_seconds")

    func run() async throws {
        await runPeriodically(every: interval, logger: logger, failure: "settling pending charges failed") {
            try await tick()
        }
        do { try await tick() } catch {
            logger.warning("the last settling round failed; another instance folds what is pending",
                           metadata: ["error": "\(error)"])
        }
    }

    private func tick() async throws {
        let started = ContinuousClock.now
        let folded = try await settler.tick()
        Self.tickTimer.record(duration: ContinuousClock.now - started)
        Self.foldedCounter.increment(by: folded)
    }
}
