import TallyCore

/// How often each fault strikes in a run. Drawn per seed, so some runs see none of a kind and
/// others many (a fault that always strikes hides the interleavings it cuts short).
struct FaultPlan: CustomStringConvertible {
    /// Per gateway move: an instance is killed (its memory, in-flight calls and answers lost)
    /// and restarted later under a new registration.
    var crash = 0.0
    /// Per database call: the transaction aborts (nothing committed, the caller gets
    /// PostgreSQL's error, so it knows).
    var abort = 0.0
    /// Per database call: it commits, but the answer is lost (the caller gets an error).
    var lostCommitAnswer = 0.0
    /// Per HTTP exchange: the request or its answer is lost (the gateway times out and resends).
    var lostHTTP = 0.0
    /// Per HTTP exchange: the request arrives twice.
    var duplicateHTTP = 0.0
    /// Per notification and listener: lost, or delivered twice.
    var lostNotification = 0.0
    var duplicateNotification = 0.0
    /// Per gateway move: an instance's clock jumps ahead.
    var clockJump = 0.0
    /// Per gateway move: the database goes down for a while (every call aborts).
    var outage = 0.0
    /// Per gateway move: an instance stops for up to 30 s (SIGSTOP, a VM migration), memory
    /// intact, long enough at times for its registration to be reaped under it.
    var pause = 0.0

    static func draw(_ random: inout SimRandom) -> FaultPlan {
        func rate(_ high: Double) -> Double { random.chance(0.3) ? 0 : Double(random.below(1_000)) / 1_000 * high }
        return FaultPlan(
            crash: rate(0.02), abort: rate(0.1), lostCommitAnswer: rate(0.1), lostHTTP: rate(0.1),
            duplicateHTTP: rate(0.1), lostNotification: rate(0.3), duplicateNotification: rate(0.2),
            clockJump: rate(0.01), outage: rate(0.005), pause: rate(0.01))
    }

    var description: String {
        let rates: [(String, Double)] = [
            ("crash", crash), ("abort", abort), ("lost-commit-answer", lostCommitAnswer),
            ("lost-http", lostHTTP), ("duplicate-http", duplicateHTTP),
            ("lost-notification", lostNotification),
            ("duplicate-notification", duplicateNotification),
            ("clock-jump", clockJump), ("outage", outage), ("pause", pause),
        ]
        return rates.filter { $0.1 > 0 }.map { "\($0.0) \(Int(($0.1 * 1000).rounded()))‰" }.joined(separator: ", ")
    }
}

/// The shape of one run, drawn from its seed.
struct SimConfiguration: CustomStringConvertible {
    var users = 3
    var instances = 2
    /// Gateway moves before the run winds down (then every batch is resent until acknowledged
    /// and the books are closed).
    var moves = 120
    /// Quotas are small against the holds, so accounts run dry and contention is the rule.
    var initialQuota: ClosedRange<Int64> = 1_000...40_000
    var cost: ClosedRange<Int64> = 0...3_000
    /// Tokens that limit (remain_quota) rather than not.
    var limitedTokenShare = 0.5
    /// The lease machines' numbers: the real defaults, with leases, journal batches and idle
    /// times drawn smaller in some runs so that refills, hand-backs and returns happen often.
    var policy = LeasePolicy(commit: .sync)
    /// `--hold-ttl` (shortened so that holds expire within a run).
    var holdTTL: SimTime = 10_000
    var faults = FaultPlan()

    /// The reaper's grace (HoldBook.reclaimAfterSeconds): the hold TTL in async mode, 5 s in sync.
    var reclaimAfter: SimTime { policy.commit == .async ? holdTTL : 5_000 }

    static func draw(_ random: inout SimRandom) -> SimConfiguration {
        var configuration = SimConfiguration()
        configuration.users = 1 + random.below(4)
        configuration.instances = 1 + random.below(4)
        configuration.moves = 60 + random.below(160)
        configuration.policy = LeasePolicy(commit: random.chance(0.5) ? .sync : .async)
        configuration.policy.leaseMultiple = random.pick([1, 4, 32])
        configuration.policy.maxJournalBatch = random.pick([1, 4, 2_000])
        configuration.policy.idleLeaseSeconds = random.pick([2.0, 30.0])
        configuration.holdTTL = random.int(3_000...20_000)
        configuration.faults = FaultPlan.draw(&random)
        return configuration
    }

    var description: String {
        "\(users) users, \(instances) instances, \(moves) moves, \(policy.commit) commits, "
            + "lease ×\(policy.leaseMultiple), journal batches ≤ \(policy.maxJournalBatch), "
            + "idle leases \(policy.idleLeaseSeconds) s, hold TTL \(holdTTL) ms; "
            + "faults: \(faults.description.isEmpty ? "none" : faults.description)"
    }
}
