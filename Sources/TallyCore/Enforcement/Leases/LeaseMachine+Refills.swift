/// Refills: one round in flight at a time; what is asked meanwhile goes out together next.
extension LeaseMachine {
    mutating func refillAnswered(_ round: Int, grants: [LeaseGrant]?, now: Double, _ out: inout [LeaseAction]) {
        guard let flight = refills.inFlight, flight.id == round else { return }
        refills.inFlight = nil
        // Granted to a registration since replaced: those units went back when it was reaped.
        let current = flight.instance == instance
        let revoked = refills.takeRevoked()
        var grants = grants
        if current, let granted = grants { grants = keepingFresh(granted, revoked: revoked, now: now, &out) }
        if let grants, current { apply(grants, wants: flight.wants, now: now) }
        var results: [LeaseAccount: LeaseGrant] = [:]
        for grant in grants ?? [] { results[grant.account] = grant }
        // Cuts that retry now and still lack units ask together, in the next round.
        refills.holding = true
        var ready: [WaitingCut] = []
        waiting.removeAll { cut in
            guard cut.reason == .refill(round) else { return false }
            ready.append(cut)
            return true
        }
        for cut in ready {
            if grants == nil {
                out.append(.answer(cut.ticket, .failed(.refillFailed)))
            } else if current {
                learn(cut, from: results, wants: flight.wants, now: now, &out)
            } else {
                attempt(cut, now: now, &out)
            }
        }
        refills.holding = false
        refills.send(instance: instance, &out)
    }

    /// The grants of accounts that no notice revoked while the round was in flight. A grant
    /// made before an account's balance was lowered (or found overdrawn) arrives after the
    /// notice that gave its lease back: it goes back too, and the cuts waiting for it ask again,
    /// from the lowered balance. Applied, the holds cut from it overdrew that balance.
    private mutating func keepingFresh(
        _ grants: [LeaseGrant], revoked: Set<LeaseAccount>, now: Double, _ out: inout [LeaseAction]
    ) -> [LeaseGrant] {
        guard !revoked.isEmpty else { return grants }
        giveBackUnused(grants.filter { revoked.contains($0.account) }, now: now, &out)
        return grants.filter { !revoked.contains($0.account) }
    }

    /// Adds the grants to the leases.
    mutating func apply(_ grants: [LeaseGrant], wants: [LeaseAccount: Int64], now: Double) {
        for grant in grants {
            var lease = accounts[grant.account] ?? AccountLease()
            lease.free += grant.granted
            lease.unlimited = grant.state == .unlimited
            lease.exhausted = grant.state == .exhausted
            lease.drained = grant.granted < wants[grant.account] ?? 0
            lease.lastRefill = now
            lease.lastGrant = grant.granted
            lease.lastUsed = now
            accounts[grant.account] = lease
        }
    }

    /// After the refill `cut` waited for: an unknown or exhausted account answers at once; an
    /// account found dry is remembered (the next shortfall on it is final), unless other
    /// instances hold leases of it: they were just asked to hand them back (`lease-wanted`), so
    /// the cut waits a moment for that before it asks again (a few times, waiting longer each);
    /// so it does when this machine itself just gave the account back (its return may not have
    /// committed, and until it does the units count as this instance's lease).
    private mutating func learn(
        _ cut: WaitingCut, from results: [LeaseAccount: LeaseGrant],
        wants: [LeaseAccount: Int64], now: Double, _ out: inout [LeaseAction]
    ) {
        var cut = cut
        var wait: Double?
        for account in [LeaseAccount.user(cut.request.userID), .token(cut.request.tokenID)] {
            guard let grant = results[account] else { continue }
            switch grant.state {
            case .unknown: return out.append(.answer(cut.ticket, .outcome(.unknown)))
            case .exhausted: return out.append(.answer(cut.ticket, .outcome(.exhausted)))
            case .ok, .unlimited: break
            }
            guard grant.granted < wants[account] ?? 0 else { continue }
            let asked = cut.handBacks[account, default: 0]
            if grant.others > 0 { contended.mark(account, now: now) }
            let handingBack = grant.others > 0 || givenBack.contains(account, now: now)
            guard handingBack, asked < policy.handBackWaits else {
                cut.drained.insert(account)
                continue
            }
            cut.handBacks[account] = asked + 1
            wait = max(wait ?? 0, policy.handBackWaitSeconds * Double(1 << asked))
        }
        guard let wait else { return attempt(cut, now: now, &out) }
        cut.reason = .time(now + wait)
        waiting.append(cut)
    }
}

/// Refill rounds: the one in flight, and the wants of the next.
struct RefillQueue: Sendable {
    struct Round: Sendable {
        let id: Int
        let instance: String
        let wants: [LeaseAccount: Int64]
    }

    private(set) var next: [LeaseAccount: Int64] = [:]
    var inFlight: Round?
    /// While set, wants only queue (they go out together when it is cleared).
    var holding = false
    private var closed = false
    private var revoked: Set<LeaseAccount> = []
    private var nextID = 1

    func isAsking(for account: LeaseAccount) -> Bool {
        inFlight?.wants[account] != nil || next[account] != nil
    }

    /// Queues `wants`; returns the round whose answer they wait for: the one in flight when it
    /// asks for every account already, else the next.
    mutating func request(_ wants: [AccountUnits], instance: String, _ out: inout [LeaseAction]) -> Int {
        if let flight = inFlight, flight.instance == instance, wants.allSatisfy({ flight.wants[$0.account] != nil }) {
            return flight.id
        }
        for want in wants {
            // Saturating: what PostgreSQL grants is bounded by the balance, whatever is asked.
            let sum = next[want.account, default: 0].addingReportingOverflow(want.units)
            next[want.account] = sum.overflow ? Int64.max : sum.partialValue
        }
        let round = nextID
        send(instance: instance, &out)
        return round
    }

    /// Marks `account`'s grant in the round in flight as stale (its balance changed meanwhile).
    mutating func revoke(_ account: LeaseAccount) {
        if inFlight?.wants[account] != nil { revoked.insert(account) }
    }

    /// Marks every grant of the round in flight as stale.
    mutating func revokeAll() {
        if let flight = inFlight { revoked.formUnion(flight.wants.keys) }
    }

    mutating func takeRevoked() -> Set<LeaseAccount> {
        defer { revoked = [] }
        return revoked
    }

    /// Drops the wants not sent yet and sends no more rounds: a retiring instance leases nothing
    /// (a round sent after its registration was reaped would register it anew mid-shutdown).
    mutating func close() {
        closed = true
        next = [:]
    }

    /// Sends the next round unless one is in flight.
    mutating func send(instance: String, _ out: inout [LeaseAction]) {
        guard inFlight == nil, !holding, !closed, !next.isEmpty else { return }
        let round = Round(id: nextID, instance: instance, wants: next)
        next = [:]
        nextID += 1
        inFlight = round
        let wants = round.wants.map { AccountUnits($0.key, $0.value) }.sorted { $0.account < $1.account }
        out.append(.refill(round: round.id, instance: instance, wants: wants))
    }
}
