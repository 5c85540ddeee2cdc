import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import TallyStore

/// Folds what committed ingest batches still owe (``Settler``): into balances every
/// `balanceInterval`, into the usage rollups every `rollUpInterval` — or as soon as batches
/// pause (the balance fold found nothing for `quietPeriod` after folding something), so a burst
/// is settled whole a moment after its last batch instead of up to `rollUpInterval` later. Safe
/// on every instance at once: each fold claims shards of accounts no other settler holds, and is
/// exactly once by construction. On graceful shutdown it folds one last time, so a stopped fleet
/// leaves little pending.
struct SettlerService: Service {
    let settler: Settler
    let balanceInterval: Duration
    let rollUpInterval: Duration
    let logger: Logger
    private let batchesPaused = PauseSignal()

    init(settler: Settler, balanceInterval: Duration, rollUpInterval: Duration, logger: Logger) {
        self.settler = settler
        self.balanceInterval = balanceInterval
        self.rollUpInterval = rollUpInterval
        self.logger = logger
    }

    /// How long the balance fold finds nothing before the roll-up stops waiting for its interval.
    static let quietPeriod = Duration.milliseconds(500)

    static let foldedCounter = Counter(label: "tally_settle_accounts_total")
    static let rolledCounter = Counter(label: "tally_settle_rollup_rows_total")
    static let foldTimer = Metrics.Timer(label: "tally_settle_fold_duration_seconds")

    func run() async throws {
        async let rollUps: Void = runRollUps()
        var lastFolded: ContinuousClock.Instant?
        await runPeriodically(every: balanceInterval, logger: logger, failure: "folding pending charges failed") {
            if try await foldBalances() > 0 {
                lastFolded = .now
            } else if let last = lastFolded, ContinuousClock.now - last >= Self.quietPeriod {
                lastFolded = nil
                batchesPaused.raise()
            }
        }
        await rollUps
        do {
            _ = try await foldBalances()
            try await rollUp()
        } catch {
            logger.warning(
                "the last settling round failed; another instance folds what is pending",
                metadata: ["error": "\(error)"])
        }
    }

    /// Rolls usage up every `rollUpInterval`, or at the next balance tick once batches paused.
    private func runRollUps() async {
        var last = ContinuousClock.now
        await runPeriodically(every: balanceInterval, logger: logger, failure: "rolling usage up failed") {
            guard batchesPaused.take() || ContinuousClock.now - last >= rollUpInterval else { return }
            last = .now
            try await rollUp()
        }
    }

    private func foldBalances() async throws -> Int {
        let started = ContinuousClock.now
        let folded = try await settler.foldBalances()
        Self.foldTimer.record(duration: ContinuousClock.now - started)
        Self.foldedCounter.increment(by: folded)
        return folded
    }

    private func rollUp() async throws {
        Self.rolledCounter.increment(by: try await settler.rollUp())
    }
}

/// A flag one loop raises and another takes (clears) when it acts on it.
private final class PauseSignal: Sendable {
    private let raised = Atomic<Bool>(false)

    func raise() { raised.store(true, ordering: .releasing) }
    func take() -> Bool { raised.exchange(false, ordering: .acquiringAndReleasing) }
}
