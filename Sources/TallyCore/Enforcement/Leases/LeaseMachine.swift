/// One instance's (or one stripe's) leases as a pure state machine: events in, actions out,
/// the time given with every event. No I/O, no locks, no clock: a shell (`HoldBook`) runs the
/// actions against PostgreSQL, a simulation against a simulated database.
///
/// Why no interleaving overdraws: a hold is cut only from units leased to this instance, and
/// a lease is granted (under the account's row lock) only from what the account has left
/// after every other lease and open hold. The machine never believes it has more than its
/// lease rows hold: for every account, at every step,
/// `free + holds queued or in flight to the journal + returns in flight ≤ lease row`
/// (equal once every refill it asked for was answered).
public struct LeaseMachine: Sendable {
    public let policy: LeasePolicy
    /// The registration the leases belong to ("" before the first `registered`).
    public private(set) var instance = ""
    var validUntil = 0.0
    var renewing = false
    var retiring = false
    var accounts: [LeaseAccount: AccountLease] = [:]
    /// Accounts whose lease this machine gave back within `ownReturnSeconds`. Until that return
    /// commits, a refill finds the units still reserved (as this instance's, not another's), so a
    /// refill that falls short meanwhile waits for it as it waits for another instance's hand-back.
    var givenBack: RecentAccounts
    /// Accounts another instance wanted too within `contendedSeconds` (it asked for this
    /// machine's lease, or a refill found others holding leases of it): leased hold by hold.
    var contended: RecentAccounts
    var retries = RecentHolds()
    /// Reservations waiting for a refill, hold ids, the registration or time.
    var waiting: [WaitingCut] = []
    var refills = RefillQueue()
    var holdIDs = HoldIDStock()
    var journal = JournalQueue()
    var flushes: [(through: Int, ticket: LeaseTicket)] = []
    var wakeAt: Double?

    public init(policy: LeasePolicy) {
        self.policy = policy
        givenBack = RecentAccounts(seconds: policy.ownReturnSeconds)
        contended = RecentAccounts(seconds: policy.contendedSeconds)
    }

    /// Units leased and not cut yet.
    public var leasedUnits: Int64 { accounts.values.reduce(0) { $0 + $1.free } }
    /// Holds cut and not journaled yet.
    public var journalQueueLength: Int { journal.queue.count }
    /// Units of `account` leased and not cut yet.
    public func free(_ account: LeaseAccount) -> Int64 { accounts[account]?.free ?? 0 }

    /// Handles one event at `now`; returns what the shell must do, in order.
    public mutating func handle(_ event: LeaseEvent, at now: Double) -> [LeaseAction] {
        var out: [LeaseAction] = []
        switch event {
        case .registered(let instance, let validUntil): register(instance, validUntil: validUntil, now: now, &out)
        case .renewalFailed: renewalFailed(now: now, &out)
        case .cut(let ticket, let request): attempt(WaitingCut(ticket: ticket, request: request), now: now, &out)
        case .flush(let ticket): flush(ticket, &out)
        case .refillGranted(let round, let grants): refillAnswered(round, grants: grants, now: now, &out)
        case .refillFailed(let round): refillAnswered(round, grants: nil, now: now, &out)
        case .leaseGranted(let instance, let wants, let grants):
            guard instance == self.instance else { break }
            apply(grants, wants: Dictionary(wants.map { ($0.account, $0.units) }, uniquingKeysWith: +), now: now)
        case .staleLeaseGranted(let instance, let grants):
            guard instance == self.instance else { break }  // it went back with its registration
            giveBackUnused(grants, now: now, &out)
        case .holdIDsGranted(let first, let count): holdIDsAnswered(first..<(first + count), now: now, &out)
        case .holdIDsFailed: holdIDsAnswered(nil, now: now, &out)
        case .journalCommitted(let batch, let outcomes): journalCommitted(batch, outcomes: outcomes, now: now, &out)
        case .journalFailed(let batch): journalFailed(batch, now: now, &out)
        case .journalRolledBack(let batch): journalRolledBack(batch, now: now, &out)
        case .journalRefused(let batch): journalRefused(batch, now: now, &out)
        case .leaseWanted(let account):
            contended.mark(account, now: now)
            giveBack(account, now: now, &out)
        case .overdrawn(let account), .accountChanged(let account):
            giveBack(account, now: now, &out)
            refills.revoke(account)
        case .idleTick:
            let idleAfter = policy.idleLeaseSeconds
            giveBack(where: { _, lease in now - lease.lastUsed >= idleAfter }, now: now, &out)
            givenBack.forgetExpired(now: now)
            contended.forgetExpired(now: now)
        case .returnAll:
            // Every balance may have changed (an import, notices missed while the listener
            // reconnected): a grant in flight may predate the change too.
            giveBack(where: { _, _ in true }, now: now, &out)
            refills.revokeAll()
        case .clock: break
        case .retire: retire(&out)
        }
        wakeDue(now: now, &out)
        return out
    }

    // MARK: Registration

    private mutating func register(_ instance: String, validUntil: Double, now: Double, _ out: inout [LeaseAction]) {
        // Leases belong to a registration: a new one starts with none (the old ones went back
        // when it was reaped).
        if instance != self.instance { accounts = [:] }
        self.instance = instance
        self.validUntil = retiring ? 0 : validUntil
        renewing = false
        holdIDs.topUp(lowWater: policy.holdIDLowWater, &out)
        resume(where: { $0 == .registration }, now: now, &out)
    }

    private mutating func renewalFailed(now: Double, _ out: inout [LeaseAction]) {
        renewing = false
        resume(where: { $0 == .registration }, now: now, &out)
    }

    private mutating func retire(_ out: inout [LeaseAction]) {
        retiring = true
        validUntil = 0
        // Everything leased goes back with the registration (tally_reap_instances).
        accounts = [:]
        refills.close()
        for cut in waiting { out.append(.answer(cut.ticket, .failed(.registrationLapsed))) }
        waiting = []
    }

    // MARK: Cutting holds

    /// Tries to cut `cut`'s hold now; otherwise parks it until what it lacks arrives.
    mutating func attempt(_ cut: WaitingCut, now: Double, _ out: inout [LeaseAction]) {
        var cut = cut
        guard !retiring else { return out.append(.answer(cut.ticket, .failed(.registrationLapsed))) }
        guard now < validUntil else {
            // The shell renews every few seconds; if it could not, it is asked once more now.
            if cut.renewalAsked { return out.append(.answer(cut.ticket, .failed(.registrationLapsed))) }
            cut.renewalAsked = true
            if !renewing {
                renewing = true
                out.append(.renewRegistration)
            }
            return park(cut, until: .registration)
        }
        let request = cut.request
        if let earlier = retries.find(request.requestID, now: now, keepFor: policy.recentSeconds) {
            guard earlier.scope == request.scope else {
                return out.append(.answer(cut.ticket, .outcome(.requestIDInUse)))
            }
            // Sync mode answers only what PostgreSQL holds: a retry of a hold still queued for
            // the journal waits for the same commit.
            if policy.commit == .sync, journal.awaitCommit(of: request.requestID, ticket: cut.ticket) { return }
            return out.append(.answer(cut.ticket, .outcome(earlier.outcome)))
        }
        guard request.amount <= LeasePolicy.maximumHold else {
            return out.append(.answer(cut.ticket, .outcome(.insufficient)))
        }
        let wants = shortfall(of: request, now: now)
        guard wants.isEmpty else {
            // Short again after a refill that found the account dry: nothing is left.
            let dry = wants.contains { cut.drained.contains($0.account) }
            if dry || cut.refillRounds >= policy.maxRefillRounds {
                return out.append(.answer(cut.ticket, .outcome(.insufficient)))
            }
            cut.refillRounds += 1
            let round = refills.request(wants, instance: instance, &out)
            return park(cut, until: .refill(round))
        }
        guard let holdID = holdIDs.take(lowWater: policy.holdIDLowWater, &out) else {
            return park(cut, until: .holdIDs)
        }
        let tokenLimits = cutLeases(of: request, now: now)
        let held = HoldOutcome.held(holdID: holdID, amount: request.amount)
        retries.remember(
            request.requestID, for: request.scope, .duplicate(holdID: holdID, amount: request.amount, status: "held"))
        let sync = policy.commit == .sync
        journal.enqueue(
            JournaledHold(id: holdID, request: request, tokenLeased: tokenLimits), instance: instance,
            ticket: sync ? cut.ticket : nil)
        if !sync { out.append(.answer(cut.ticket, .outcome(held))) }
        journal.startBatch(maxBatch: policy.maxJournalBatch, &out)
        refillAhead(request, tokenLimits: tokenLimits, now: now, &out)
    }

    /// What the user's and the token's leases lack for `request`, as refill wants. A token seen
    /// for the first time (or exhausted before) is leased even for a free request: the grant
    /// tells whether it limits at all and whether it has quota left. The user must have a unit
    /// free even for a hold of nothing: an account spent to zero, or overdrawn by an overrun, is
    /// refused every request until a top-up (DESIGN §5; new-api refuses a quota ≤ 0 too). A hold
    /// estimated at nothing (a free model, a model priced per compute second whose length the
    /// estimate does not give) was cut from an empty lease, and its line charged a spent account.
    private func shortfall(of request: HoldRequest, now: Double) -> [AccountUnits] {
        var wants: [AccountUnits] = []
        let userAccount = LeaseAccount.user(request.userID), tokenAccount = LeaseAccount.token(request.tokenID)
        let user = accounts[userAccount] ?? AccountLease()
        let userNeeds = max(request.amount, 1)
        if user.free < userNeeds {
            wants.append(AccountUnits(userAccount, want(userNeeds - user.free, of: userAccount, now: now)))
        }
        let token = accounts[tokenAccount]
        let tokenKnown = token.map { !$0.exhausted } ?? false
        let tokenFree = token?.free ?? 0
        if !tokenKnown || (token?.unlimited == false && tokenFree < request.amount) {
            let missing = max(request.amount - tokenFree, 1)
            wants.append(AccountUnits(tokenAccount, want(missing, of: tokenAccount, now: now)))
        }
        return wants
    }

    /// Units of `account` to ask for when `missing` are short: `leaseMultiple` times as many, and
    /// twice the last grant when that one went fast; only `missing` while other instances want
    /// the account too, so that they share what is left of it instead of handing all of it back
    /// and forth (each hand-back costs a wait, and the last of them a refusal).
    func want(_ missing: Int64, of account: LeaseAccount, now: Double) -> Int64 {
        if contended.contains(account, now: now) { return missing }
        let lease = accounts[account] ?? AccountLease()
        var want = policy.leaseWant(missing: missing)
        if now - lease.lastRefill < policy.fastRefillSeconds, lease.lastGrant > 0 {
            want = max(want, min(lease.lastGrant, Int64.max / 8) * 2)
        }
        return want
    }

    /// Takes the amount off the user's lease and a limited token's; true when the token limits.
    private mutating func cutLeases(of request: HoldRequest, now: Double) -> Bool {
        let tokenAccount = LeaseAccount.token(request.tokenID)
        accounts[.user(request.userID), default: AccountLease()].cut(request.amount, now: now)
        let tokenLimits = accounts[tokenAccount]?.unlimited != true
        accounts[tokenAccount, default: AccountLease()].cut(tokenLimits ? request.amount : 0, now: now)
        return tokenLimits
    }

    /// Refills the leases a cut drew below a quarter of their last grant, before they run dry,
    /// unless their last refill found the account short (then only a cut that lacks units asks)
    /// or other instances want it too (units leased ahead here may be what they lack now).
    private mutating func refillAhead(
        _ request: HoldRequest, tokenLimits: Bool, now: Double,
        _ out: inout [LeaseAction]
    ) {
        var wants: [AccountUnits] = []
        let user = LeaseAccount.user(request.userID)
        for account in tokenLimits ? [user, .token(request.tokenID)] : [user] {
            guard let lease = accounts[account], !lease.drained, lease.lastGrant > 0,
                lease.free < lease.lastGrant / policy.refillAheadDivisor,
                !refills.isAsking(for: account), !contended.contains(account, now: now)
            else { continue }
            wants.append(AccountUnits(account, want(max(request.amount, 1), of: account, now: now)))
        }
        if !wants.isEmpty { _ = refills.request(wants, instance: instance, &out) }
    }

    private mutating func park(_ cut: WaitingCut, until reason: WaitingCut.Reason) {
        var cut = cut
        cut.reason = reason
        waiting.append(cut)
    }

    /// Takes the waiting cuts `matching` out and tries each again, in arrival order.
    mutating func resume(where matching: (WaitingCut.Reason) -> Bool, now: Double, _ out: inout [LeaseAction]) {
        guard waiting.contains(where: { matching($0.reason) }) else { return }
        var ready: [WaitingCut] = []
        waiting.removeAll { cut in
            guard matching(cut.reason) else { return false }
            ready.append(cut)
            return true
        }
        for cut in ready { attempt(cut, now: now, &out) }
    }

    // MARK: Hold ids

    private mutating func holdIDsAnswered(_ block: Range<Int64>?, now: Double, _ out: inout [LeaseAction]) {
        holdIDs.fetching = false
        if let block {
            holdIDs.add(block)
            return resume(where: { $0 == .holdIDs }, now: now, &out)
        }
        waiting.removeAll { cut in
            guard cut.reason == .holdIDs else { return false }
            out.append(.answer(cut.ticket, .failed(.holdIDsFailed)))
            return true
        }
    }

    // MARK: Giving leases back

    /// Gives back the account's lease and forgets it: the next hold leases afresh.
    private mutating func giveBack(_ account: LeaseAccount, now: Double, _ out: inout [LeaseAction]) {
        guard let lease = accounts.removeValue(forKey: account), lease.free > 0 else { return }
        givenBack.mark(account, now: now)
        out.append(.giveBack(instance: instance, amounts: [AccountUnits(account, lease.free)]))
    }

    /// Gives back grants that are not to be used, marked as given back: a refill that finds the
    /// account short before the return commits waits for it instead of refusing.
    mutating func giveBackUnused(_ grants: [LeaseGrant], now: Double, _ out: inout [LeaseAction]) {
        let amounts = grants.filter { $0.granted > 0 }.map { AccountUnits($0.account, $0.granted) }
        guard !amounts.isEmpty else { return }
        for units in amounts { givenBack.mark(units.account, now: now) }
        out.append(.giveBack(instance: instance, amounts: amounts))
    }

    /// Gives back the leases `matching` and forgets them.
    private mutating func giveBack(
        where matching: (LeaseAccount, AccountLease) -> Bool, now: Double, _ out: inout [LeaseAction]
    ) {
        var amounts: [AccountUnits] = []
        accounts = accounts.filter { account, lease in
            guard matching(account, lease) else { return true }
            if lease.free > 0 { amounts.append(AccountUnits(account, lease.free)) }
            return false
        }
        guard !amounts.isEmpty else { return }
        for units in amounts { givenBack.mark(units.account, now: now) }
        out.append(.giveBack(instance: instance, amounts: amounts.sorted { $0.account < $1.account }))
    }

    // MARK: Time

    /// Ends the waits that are due and asks for a wake-up for the next one.
    private mutating func wakeDue(now: Double, _ out: inout [LeaseAction]) {
        if let at = wakeAt, at <= now { wakeAt = nil }
        guard !waiting.isEmpty || journal.retryAt != nil else { return }
        resume(where: { if case .time(let at) = $0 { at <= now } else { false } }, now: now, &out)
        if let at = journal.retryAt, at <= now {
            journal.retryAt = nil
            journal.startBatch(maxBatch: policy.maxJournalBatch, &out)
        }
        var due = journal.retryAt ?? .infinity
        for cut in waiting { if case .time(let at) = cut.reason { due = min(due, at) } }
        guard due < (wakeAt ?? .infinity) else { return }
        wakeAt = due
        out.append(.wake(at: due))
    }
}

/// One account's lease in memory.
struct AccountLease: Sendable, Equatable {
    var free: Int64 = 0
    /// A token that does not limit: nothing to lease.
    var unlimited = false
    /// A limited token with nothing left (`remain_quota <= 0`): asked again every time.
    var exhausted = false
    /// The last refill granted less than it asked.
    var drained = false
    var lastUsed = 0.0
    var lastRefill = -Double.infinity
    var lastGrant: Int64 = 0

    mutating func cut(_ amount: Int64, now: Double) {
        free -= amount
        lastUsed = now
    }
}

/// A reservation that could not be cut yet, and what it learnt on the way.
struct WaitingCut: Sendable {
    enum Reason: Sendable, Equatable {
        case refill(Int)
        case holdIDs
        case registration
        case time(Double)
    }

    let ticket: LeaseTicket
    let request: HoldRequest
    var reason = Reason.registration
    /// Accounts a refill found dry for this reservation.
    var drained: Set<LeaseAccount> = []
    /// How often other instances were asked to hand back each account for this reservation.
    var handBacks: [LeaseAccount: Int] = [:]
    var refillRounds = 0
    var renewalAsked = false
}

/// Accounts marked within the last `seconds` (a return or a sign of contention); idle ticks drop
/// the older marks.
struct RecentAccounts: Sendable {
    let seconds: Double
    private var markedAt: [LeaseAccount: Double] = [:]

    init(seconds: Double) { self.seconds = seconds }

    mutating func mark(_ account: LeaseAccount, now: Double) { markedAt[account] = now }

    func contains(_ account: LeaseAccount, now: Double) -> Bool {
        guard let at = markedAt[account] else { return false }
        return now - at < seconds
    }

    mutating func forgetExpired(now: Double) { markedAt = markedAt.filter { now - $0.value < seconds } }
}

/// Request ids answered recently, with the scope each was answered for, for retries: two
/// generations swapped every `keepFor`. Ids are matched by bytes (``ExactText``), as the
/// `holds` table matches them: another request whose id only looked the same would be answered
/// with this one's hold, and run upstream with nothing reserved.
struct RecentHolds: Sendable {
    struct Answered: Sendable {
        let scope: RequestScope
        let outcome: HoldOutcome
    }

    private var current: [ExactText: Answered] = [:]
    private var previous: [ExactText: Answered] = [:]
    private var since = -Double.infinity

    mutating func find(_ requestID: String, now: Double, keepFor: Double) -> Answered? {
        if now - since >= keepFor {
            previous = current
            current = [:]
            since = now
        }
        let key = ExactText(requestID)
        return current[key] ?? previous[key]
    }

    mutating func remember(_ requestID: String, for scope: RequestScope, _ outcome: HoldOutcome) {
        current[ExactText(requestID)] = Answered(scope: scope, outcome: outcome)
    }

    mutating func forget(_ requestID: String) {
        let key = ExactText(requestID)
        current[key] = nil
        previous[key] = nil
    }
}

/// Fresh hold ids, in blocks taken from the `holds` sequence.
struct HoldIDStock: Sendable {
    private var blocks: [Range<Int64>] = []
    var fetching = false

    private var count: Int64 { blocks.reduce(0) { $0 + Int64($1.count) } }

    mutating func add(_ block: Range<Int64>) { blocks.append(block) }

    /// The next id (nil when none is left); asks for a block when the stock runs low.
    mutating func take(lowWater: Int64, _ out: inout [LeaseAction]) -> Int64? {
        defer { topUp(lowWater: lowWater, &out) }
        while let first = blocks.first, first.isEmpty { blocks.removeFirst() }
        guard !blocks.isEmpty else { return nil }
        return blocks[0].popFirst()
    }

    mutating func topUp(lowWater: Int64, _ out: inout [LeaseAction]) {
        guard !fetching, count < lowWater else { return }
        fetching = true
        out.append(.fetchHoldIDs)
    }
}
