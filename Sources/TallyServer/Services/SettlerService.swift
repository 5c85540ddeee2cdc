import Logging
import Metrics
import ServiceLifecycle
import TallyStore

/// Folds what committed ingest batches still owe (``Settler``): into balances every
/// `balanceInterval`, into the usage rollups every `rollUpInterval`. Safe on every instance at
/// once: each fold claims shards of accounts no other settler holds, and is exactly once by
/// construction. On graceful shutdown it folds one last time, so a stopped fleet leaves little
/// pending.
struct SettlerService: Service {
    let settler: Settler
    let balanceInterval: Duration
    let rollUpInterval: Duration
    let logger: Logger

    static let foldedCounter = Counter(label: "tally_settle_accounts_total")
    static let rolledCounter = Counter(label: "tally_settle_rollup_rows_total")
    static let foldTimer = Metrics.Timer(label: "tally_settle_fold_duration_seconds")

    func run() async throws {
        async let rollUps: Void = runPeriodically(every: rollUpInterval, logger: logger,
                                                  failure: "rolling usage up failed") { try await rollUp() }
        await runPeriodically(every: balanceInterval, logger: logger, failure: "folding pending charges failed") {
            try await foldBalances()
        }
        await rollUps
        do {
            try await foldBalances()
            try await rollUp()
        } catch {
            logger.warning("the last settling round failed; another instance folds what is pending",
                           metadata: ["error": "\(error)"])
        }
    }

    private func foldBalances() async throws {
        let started = ContinuousClock.now
        let folded = try await settler.foldBalances()
        Self.foldTimer.record(duration: ContinuousClock.now - started)
        Self.foldedCounter.increment(by: folded)
    }

    private func rollUp() async throws {
        Self.rolledCounter.increment(by: try await settler.rollUp())
    }
}
