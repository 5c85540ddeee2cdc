/// The numbers a ``LeaseMachine`` works by (docs/enforcement.md).
public struct LeasePolicy: Sendable, Equatable {
    public var commit: HoldCommitMode
    /// A refill asks for this many holds' worth at least, and twice the last grant when that
    /// one was used up within `fastRefillSeconds`, so a hot account refills rarely.
    public var leaseMultiple: Int64 = 32
    public var fastRefillSeconds = 1.0
    /// A lease is refilled ahead of need once less than this share of its last grant is left
    /// (1/4), so a busy account does not wait for a refill.
    public var refillAheadDivisor: Int64 = 4
    /// A reservation is given up (insufficient) after this many refill rounds.
    public var maxRefillRounds = 8
    /// How long a refill that fell short waits for other instances to hand leases back before it
    /// asks again, the first time; each time after waits twice as long, `handBackWaits` times
    /// at most (50 + 100 + 200 ms), since a hand-back takes a notification and a commit.
    public var handBackWaitSeconds = 0.05
    public var handBackWaits = 3
    /// A lease this machine gave back counts as on its way back this long: a refill that finds
    /// the account short meanwhile waits for the return as for another instance's hand-back.
    public var ownReturnSeconds = 1.0
    /// An account other instances want too (a hand-back was asked of this machine, or asked by
    /// it) is leased only as far as each hold needs, until none wanted it for this long.
    public var contendedSeconds = 10.0
    /// A lease unused this long goes back to its account.
    public var idleLeaseSeconds = 30.0
    /// Request ids answered are remembered for one to two times this long, for retries.
    public var recentSeconds = 10.0
    public var maxJournalBatch = 2_000
    /// A failed journal batch is written again after `journalRetrySeconds` × failures in a row,
    /// at most `journalRetryMaxSeconds`.
    public var journalRetrySeconds = 0.05
    public var journalRetryMaxSeconds = 1.0
    /// Fresh hold ids are fetched once fewer than this many are left.
    public var holdIDLowWater: Int64 = 256

    public init(commit: HoldCommitMode) {
        self.commit = commit
    }

    /// The largest hold that can be cut: no balance or key holds more (``QuotaLimits``), so a
    /// larger estimate is refused at once, without asking PostgreSQL for multiples of it.
    public static let maximumHold = QuotaLimits.maximum

    /// What a fresh lease asks for when `missing` units are short: `leaseMultiple` times as many.
    public func leaseWant(missing: Int64) -> Int64 {
        let want = missing.multipliedReportingOverflow(by: leaseMultiple)
        return want.overflow ? Int64.max / 4 : want.partialValue
    }
}
