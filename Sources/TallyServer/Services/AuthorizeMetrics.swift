import Dispatch
import Metrics

/// Where authorize spends its time and where it waits (docs/enforcement.md, "Metrics"). Stage
/// times and lock times are atomic counters (seconds and calls), cheap enough for every
/// request: their rates give the mean per stage. Journal batches and refills, a few hundred a
/// second, are histograms.
public enum AuthorizeMetrics {
    /// The stages of one authorization, in order.
    public enum Stage: String, CaseIterable, Sendable {
        /// Reading and decoding the body.
        case body
        /// The key: from the cache, or one round trip (with a lease for a cold account).
        case key
        /// Checks 3–9 and the estimate's price.
        case checks
        /// The hold: cut from a lease; waits for a refill when short, and in sync mode for the
        /// journal commit.
        case hold
        /// Encoding and handing the answer to the server.
        case answer
    }

    public static let journalCommitLabel = "tally_hold_journal_commit_seconds"
    public static let journalBatchLabel = "tally_hold_journal_batch_holds"
    public static let refillLabel = "tally_lease_refill_seconds"
    /// Histogram buckets: commits and refills take 0.2–50 ms; batches hold 1–2,000 holds.
    public static let durationBuckets: [Duration] = [
        0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
        0.25, 1,
    ].map { .nanoseconds(Int64($0 * 1e9)) }
    public static let batchBuckets: [Double] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_000]

    static let stageSeconds = Stage.allCases.map {
        FloatingPointCounter(label: "tally_authorize_stage_seconds_total", dimensions: [("stage", $0.rawValue)])
    }
    static let stageCalls = Stage.allCases.map {
        Counter(label: "tally_authorize_stage_calls_total", dimensions: [("stage", $0.rawValue)])
    }
    static let lockWaitSeconds = FloatingPointCounter(label: "tally_hold_book_lock_wait_seconds_total")
    static let lockHeldSeconds = FloatingPointCounter(label: "tally_hold_book_lock_held_seconds_total")
    static let lockSteps = Counter(label: "tally_hold_book_steps_total")
    static let journalCommit = Timer(label: journalCommitLabel)
    static let journalBatch = Recorder(label: journalBatchLabel)
    static let journalsInFlight = Meter(label: "tally_hold_journal_batches_in_flight")
    /// Journal calls that failed (PostgreSQL refused or could not be reached; their batches are
    /// written again after a pause). A reaped registration's refusal is not a failure.
    static let journalFailures = Counter(label: "tally_hold_journal_failures_total")
    static let refill = Timer(label: refillLabel)

    /// Monotonic nanoseconds.
    @inline(__always) public static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// Counts `stage` as having run from `start` until now; returns now (the next stage's start).
    @discardableResult
    public static func record(_ stage: Stage, since start: UInt64) -> UInt64 {
        let end = now()
        let index = Stage.allCases.firstIndex(of: stage)!
        stageSeconds[index].increment(by: Double(end &- start) / 1e9)
        stageCalls[index].increment()
        return end
    }

    static func lock(waited: UInt64, held: UInt64) {
        lockWaitSeconds.increment(by: Double(waited) / 1e9)
        lockHeldSeconds.increment(by: Double(held) / 1e9)
        lockSteps.increment()
    }
}
