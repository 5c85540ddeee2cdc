import Dispatch
import Foundation
import Synchronization
import TallyCore
import TallyPostgres
import TallyStore

/// This instance's leases: the shell around ``LeaseMachine`` (TallyCore), which decides
/// everything — when to cut, refill, journal, give back, answer. The book feeds it events
/// under a lock, with the time, and runs the actions it returns against PostgreSQL
/// (``LeaseRepository``): refills, journal batches, returns, hold-id blocks, renewals, wake-ups.
/// Authorize waits only for its own answer (docs/enforcement.md, migration 0009).
///
/// The book is striped by user: each stripe is a machine of its own, with its own lock, refill
/// round and journal batch in flight, so authorizations of different accounts never wait for
/// each other and several journal batches commit at once. A token belongs to one user, so a
/// hold touches one stripe, and an account's holds are journaled in the order they were cut.
public final class HoldBook: Sendable {
    public let mode: HoldCommitMode
    private let repository: any LeaseRepository
    private let holdTTLSeconds: Int
    private let stripes: [Stripe]
    private let registered: Mutex<String>
    /// The stripes' journal batches and refill rounds, several to a transaction. A batch's
    /// outcomes are nil when the journal refused it (its registration was reaped).
    private let journals: Coalescer<JournalBatch, Result<[JournalOutcome]?, any Error>>
    private let refills: Coalescer<RefillRound, Result<[LeaseGrant], any Error>>
    /// Refusals' lookups of a stored hold, one query for all those asked meanwhile: a client
    /// hammering a spent account costs a query per round trip, not one per refusal.
    private let storedHolds: Coalescer<ScopedRequestID, HoldOutcome?>
    /// The amount of a recent hold: a cold key's first lease is `leaseMultiple` of them.
    private let typicalAmount = Atomic<Int64>(0)
    /// Notices of a lowered or overdrawn balance, and returns of every lease (an import, a
    /// listener reconnected), so far: a lookup's lease granted while one came may predate it.
    private let lowerings = Atomic<Int>(0)
    private let retiring = Atomic<Bool>(false)

    /// The registration's lifetime; it is renewed every `renewInterval`.
    public static let registrationTTLSeconds = 15
    public static let renewInterval: Duration = .seconds(3)
    /// Hold ids come from the `holds` sequence (INCREMENT BY 1024) a block at a time.
    static let holdIDBlock: Int64 = 1024
    /// Stripes by default: enough that a few busy accounts rarely share one.
    public static let defaultStripes = 16
    /// Journal transactions in flight at once, by default: half the cores, at least 2 and at most
    /// 4. On a small host fewer, larger group commits leave more CPU to the rest (two cores: 10–14 %
    /// less CPU per authorization than with 4, docs/performance.md); with cores to spare, several
    /// commits at once keep a hold from waiting behind others. Refills take half as many.
    public static let defaultJournalConcurrency = min(4, max(2, ProcessInfo.processInfo.activeProcessorCount / 2))

    private struct JournalBatch: Sendable {
        let instance: String
        let holds: [JournaledHold]
    }

    struct RefillRound: Sendable {
        let instance: String
        let wants: [AccountUnits]
    }

    private final class Stripe: Sendable {
        let book: Mutex<Book>

        init(mode: HoldCommitMode) {
            book = Mutex(Book(machine: LeaseMachine(policy: LeasePolicy(commit: mode))))
        }
    }

    private struct Book {
        var machine: LeaseMachine
        var nextTicket: UInt64 = 0
        var holds: [LeaseTicket: CheckedContinuation<HoldOutcome, any Error>] = [:]
        var flushes: [LeaseTicket: CheckedContinuation<Void, Never>] = [:]

        mutating func ticket() -> LeaseTicket {
            nextTicket += 1
            return LeaseTicket(nextTicket)
        }
    }

    /// A caller to resume once the lock is released.
    private enum Resume {
        case hold(CheckedContinuation<HoldOutcome, any Error>, HoldAnswer)
        case flush(CheckedContinuation<Void, Never>)
    }

    public init(
        repository: any LeaseRepository, holdTTLSeconds: Int, mode: HoldCommitMode = .sync,
        stripes: Int = defaultStripes, journalConcurrency: Int = defaultJournalConcurrency
    ) {
        self.repository = repository
        self.holdTTLSeconds = holdTTLSeconds
        self.mode = mode
        self.stripes = (0..<max(1, stripes)).map { _ in Stripe(mode: mode) }
        registered = Mutex(Self.newInstanceID())
        journals = Coalescer(limit: journalConcurrency) { batches in
            await Self.journal(batches, repository: repository, ttlSeconds: holdTTLSeconds)
        }
        refills = Coalescer(limit: (journalConcurrency + 1) / 2) { rounds in
            await Self.refill(rounds, repository: repository)
        }
        storedHolds = Coalescer(limit: 1) { requests in try await repository.storedHolds(requests) }
    }

    /// This instance's current registration id.
    public var instance: String { registered.withLock { $0 } }

    /// Units leased and not cut yet, and holds waiting for the journal (for metrics).
    public var levels: (leasedUnits: Int64, journalQueue: Int) {
        stripes.reduce((0, 0)) { sum, stripe in
            stripe.book.withLock { (sum.0 + $0.machine.leasedUnits, sum.1 + $0.machine.journalQueueLength) }
        }
    }

    /// Registers the instance; call before the first `reserve`.
    public func start() async throws {
        let instance = self.instance, started = Self.now()
        try await repository.register(
            instance: instance, ttlSeconds: Self.registrationTTLSeconds,
            reclaimAfterSeconds: reclaimAfterSeconds)
        announce(instance, validUntil: Self.validUntil(renewedAt: started))
    }

    /// Tells every stripe the registration is valid until `validUntil`, unless it was replaced
    /// meanwhile (then the old one's renewal must not bring it back).
    private func announce(_ instance: String, validUntil: Double) {
        guard self.instance == instance else { return }
        everywhere(.registered(instance: instance, validUntil: validUntil))
    }

    /// Leases of a dead instance are reclaimed this long after its registration expired: the
    /// longest a hold answered but not journaled could still be settled (async), or a margin
    /// for a journal batch in flight (sync).
    private var reclaimAfterSeconds: Int { mode == .async ? holdTTLSeconds : 5 }

    /// Cuts a hold of `request.amount` from the leases of its user and (limited) token,
    /// refilling them from PostgreSQL when they run short. A refusal is checked against the
    /// holds stored: a retry this book does not remember (cut by another instance, or answered
    /// longer ago than the machine keeps answers) gets its hold, whatever is left now.
    public func reserve(_ request: HoldRequest) async throws -> HoldOutcome {
        let outcome = try await cut(request)
        guard outcome.isShortOfUnits else { return outcome }
        return try await storedHold(requestID: request.requestID, scope: request.scope) ?? outcome
    }

    /// The hold stored under `requestID` for `scope` (a retry's answer), nil when there is none:
    /// looked up with the refusals' lookups (one query for all asked meanwhile).
    public func storedHold(requestID: String, scope: RequestScope) async throws -> HoldOutcome? {
        try await storedHolds.submit(ScopedRequestID(requestID: requestID, scope: scope))
    }

    private func cut(_ request: HoldRequest) async throws -> HoldOutcome {
        if request.amount <= LeasePolicy.maximumHold, typicalAmount.load(ordering: .relaxed) != request.amount {
            typicalAmount.store(request.amount, ordering: .relaxed)
        }
        let stripe = stripe(ofUser: request.userID)
        return try await withCheckedThrowingContinuation { continuation in
            step(stripe) { book in
                let ticket = book.ticket()
                book.holds[ticket] = continuation
                return .cut(ticket, request)
            }.forEach { run($0, stripe: stripe) }
        }
    }

    /// The first lease for a key not in the cache, taken with its lookup (one round trip instead
    /// of a lookup and a refill); nil until a hold was asked for (its amount sets the size).
    public func lookupLease() -> LookupLease? {
        let typical = typicalAmount.load(ordering: .relaxed)
        guard typical > 0 else { return nil }
        let instance = self.instance
        let want = LeasePolicy(commit: mode).leaseWant(missing: typical)
        let lowered = lowerings.load(ordering: .sequentiallyConsistent)
        return LookupLease(instance: instance, want: want) { [self] userID, grants in
            // A balance lowered meanwhile (its notice gave the account's lease back) may have
            // been leased from before the change: given back, the first hold refills afresh.
            // Compared under the stripe's lock, which the notice's give-back takes after
            // counting itself: either this sees the count, or the give-back comes after.
            let wants = grants.map { AccountUnits($0.account, want) }
            let stripe = stripe(ofUser: userID)
            step(stripe) { _ in
                lowerings.load(ordering: .sequentiallyConsistent) == lowered
                    ? .leaseGranted(instance: instance, wants: wants, grants)
                    : .staleLeaseGranted(instance: instance, grants)
            }.forEach { run($0, stripe: stripe) }
        }
    }

    /// Returns once every hold cut before the call is journaled. The stripes with holds queued
    /// are waited for at once (one after the other, a release under load waited for each busy
    /// stripe's commit in turn); a stripe with nothing queued needs no wait.
    public func flush() async {
        let busy = stripes.indices.filter { stripes[$0].book.withLock { $0.machine.journalQueueLength > 0 } }
        await withTaskGroup(of: Void.self) { group in
            for stripe in busy {
                group.addTask { await self.flush(stripe: stripe) }
            }
        }
    }

    private func flush(stripe: Int) async {
        await withCheckedContinuation { continuation in
            step(stripe) { book in
                let ticket = book.ticket()
                book.flushes[ticket] = continuation
                return .flush(ticket)
            }.forEach { run($0, stripe: stripe) }
        }
    }

    // MARK: Running the machines

    private func stripe(ofUser userID: Int64) -> Int {
        Int(UInt64(bitPattern: userID) % UInt64(stripes.count))
    }

    /// Hands one stripe's machine one event and runs what it asks for.
    private func step(_ stripe: Int, _ event: LeaseEvent, error: (any Error)? = nil) {
        step(stripe, error: error) { _ in event }.forEach { run($0, stripe: stripe) }
    }

    /// Hands every stripe the event (a registration, a token's change: tokens are not known
    /// by user outside the stripe that leases them).
    private func everywhere(_ event: LeaseEvent) {
        for stripe in stripes.indices { step(stripe, event) }
    }

    /// Hands one stripe's machine one event (made under the lock, so it may register its
    /// caller) and resumes the callers it answered; returns the rest of its actions, to be run.
    private func step(_ stripe: Int, error: (any Error)? = nil, _ event: (inout Book) -> LeaseEvent) -> [LeaseAction] {
        let asked = AuthorizeMetrics.now()
        var locked: UInt64 = 0
        let (resumes, work) = stripes[stripe].book.withLock { book -> ([Resume], [LeaseAction]) in
            locked = AuthorizeMetrics.now()
            var resumes: [Resume] = [], work: [LeaseAction] = []
            let event = event(&book)
            // The machine's time is the registration's clock (`now()`), not the metrics' one.
            for action in book.machine.handle(event, at: Self.now()) {
                switch action {
                case .answer(let ticket, let answer):
                    guard let continuation = book.holds.removeValue(forKey: ticket) else { continue }
                    resumes.append(.hold(continuation, answer))
                case .flushed(let ticket):
                    guard let continuation = book.flushes.removeValue(forKey: ticket) else { continue }
                    resumes.append(.flush(continuation))
                default:
                    work.append(action)
                }
            }
            return (resumes, work)
        }
        AuthorizeMetrics.lock(waited: locked &- asked, held: AuthorizeMetrics.now() &- locked)
        for resume in resumes {
            switch resume {
            case .hold(let continuation, .outcome(let outcome)): continuation.resume(returning: outcome)
            case .hold(let continuation, .failed(let failure)):
                continuation.resume(throwing: Self.error(for: failure, error))
            case .flush(let continuation): continuation.resume()
            }
        }
        return work
    }

    /// A lapsed registration is `LeaseError.registrationLapsed`; any other failure is the
    /// error of the call that failed.
    private static func error(for failure: LeaseFailure, _ error: (any Error)?) -> any Error {
        guard failure != .registrationLapsed, let error else { return LeaseError.registrationLapsed }
        return error
    }

    /// Runs one I/O action of a stripe in a task of its own; its outcome goes back to the
    /// stripe's machine.
    private func run(_ action: LeaseAction, stripe: Int) {
        switch action {
        case .refill(let round, let instance, let wants):
            Task {
                do {
                    let grants = try await refills.submit(RefillRound(instance: instance, wants: wants)).get()
                    step(stripe, .refillGranted(round: round, grants))
                } catch {
                    if error as? LeaseError == .notRegistered { await reregister(replacing: instance) }
                    step(stripe, .refillFailed(round: round), error: error)
                }
            }
        case .journal(let batch, let instance, let holds):
            Task {
                do {
                    guard let outcomes = try await journals.submit(JournalBatch(instance: instance, holds: holds)).get()
                    else { return step(stripe, .journalRefused(batch: batch)) }
                    step(stripe, .journalCommitted(batch: batch, outcomes))
                } catch {
                    // A lost answer may hide a commit; PostgreSQL's own error proves there was none.
                    let rolledBack = (error as? PostgresError)?.provesRollback == true
                    step(
                        stripe, rolledBack ? .journalRolledBack(batch: batch) : .journalFailed(batch: batch),
                        error: error)
                }
            }
        case .giveBack(let instance, let amounts):
            // Not put back on failure: the call may have committed. The repository owes it, and
            // the next upkeep sends it again (applied once, migration 0033).
            Task { try? await repository.giveBack(instance: instance, amounts: amounts) }
        case .fetchHoldIDs:
            Task {
                do {
                    step(stripe, .holdIDsGranted(first: try await repository.holdIDBlock(), count: Self.holdIDBlock))
                } catch {
                    step(stripe, .holdIDsFailed, error: error)
                }
            }
        case .renewRegistration:
            Task {
                do { try await renew() } catch { everywhere(.renewalFailed) }
            }
        case .wake(let at):
            Task {
                // Task.sleep may wake early (its clock and this one differ in resolution and
                // origin): a wake-up before `at` would be taken as spent and not asked again.
                while case let left = at - Self.now(), left > 0, !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(left))
                }
                step(stripe, .clock)
            }
        case .answer, .flushed:
            break
        }
    }

    // MARK: Coalesced calls

    /// One `tally_journal_holds` call per registration for the stripes' batches (usually one);
    /// each batch gets its holds' outcomes back, nil when its registration was reaped, or its own
    /// call's failure: the batches of another registration in the same call are answered by
    /// theirs (a failure that stored nothing must not be taken for theirs, which may have
    /// committed).
    private static func journal(
        _ batches: [JournalBatch], repository: any LeaseRepository,
        ttlSeconds: Int
    ) async -> [Result<[JournalOutcome]?, any Error>] {
        var answers: [Result<[JournalOutcome]?, any Error>] = Array(repeating: .success([]), count: batches.count)
        for instance in Set(batches.map(\.instance)).sorted() {
            let mine = batches.indices.filter { batches[$0].instance == instance }
            let holds = mine.flatMap { batches[$0].holds }
            let started = AuthorizeMetrics.now()
            AuthorizeMetrics.journalsInFlight.increment()
            defer { AuthorizeMetrics.journalsInFlight.decrement() }
            var outcomes: ArraySlice<JournalOutcome>
            do {
                outcomes = try await repository.journal(instance: instance, holds: holds, ttlSeconds: ttlSeconds)[...]
            } catch LeaseError.notRegistered {
                for index in mine { answers[index] = .success(nil) }
                continue
            } catch {
                AuthorizeMetrics.journalFailures.increment()
                for index in mine { answers[index] = .failure(error) }
                continue
            }
            AuthorizeMetrics.journalCommit.recordNanoseconds(Int64(AuthorizeMetrics.now() &- started))
            AuthorizeMetrics.journalBatch.record(holds.count)
            for index in mine {
                answers[index] = .success(Array(outcomes.prefix(batches[index].holds.count)))
                outcomes = outcomes.dropFirst(batches[index].holds.count)
            }
        }
        return answers
    }

    /// One `tally_lease` call per registration for the stripes' rounds (their accounts are
    /// disjoint: a stripe owns its users and their tokens); each round gets its accounts' grants,
    /// or its own call's failure: a call of one registration that fails (the stale one, right
    /// after registering anew) does not take the committed grants of another's with it.
    static func refill(_ rounds: [RefillRound], repository: any LeaseRepository) async
        -> [Result<[LeaseGrant], any Error>]
    {
        var answers: [Result<[LeaseGrant], any Error>] = Array(repeating: .success([]), count: rounds.count)
        for instance in Set(rounds.map(\.instance)).sorted() {
            var pending = rounds.indices.filter { rounds[$0].instance == instance }
            while !pending.isEmpty {
                // Rounds that would ask for an account twice wait for the next call.
                var accounts: Set<LeaseAccount> = [], call: [Int] = []
                for index in pending where rounds[index].wants.allSatisfy({ !accounts.contains($0.account) }) {
                    accounts.formUnion(rounds[index].wants.map(\.account))
                    call.append(index)
                }
                pending.removeAll { call.contains($0) }
                let started = AuthorizeMetrics.now()
                let grants: [LeaseGrant]
                do {
                    grants = try await repository.lease(instance: instance, wants: call.flatMap { rounds[$0].wants })
                } catch {
                    for index in call + pending { answers[index] = .failure(error) }
                    break
                }
                AuthorizeMetrics.refill.recordNanoseconds(Int64(AuthorizeMetrics.now() &- started))
                for index in call {
                    let mine = Set(rounds[index].wants.map(\.account))
                    answers[index] = .success(grants.filter { mine.contains($0.account) })
                }
            }
        }
        return answers
    }

    // MARK: Lease upkeep

    /// Renews the registration; when it was reaped meanwhile, starts over with a new one.
    public func renew() async throws {
        let (instance, started) = (self.instance, Self.now())
        if try await repository.renew(instance: instance, ttlSeconds: Self.registrationTTLSeconds) {
            announce(instance, validUntil: Self.validUntil(renewedAt: started))
        } else {
            await reregister(replacing: instance)
        }
    }

    /// The registration `stale` is gone, and with it every lease: register anew (once, however
    /// many callers found it gone).
    private func reregister(replacing stale: String) async {
        // A refill sent before the retirement may find the registration reaped: nothing to replace.
        guard !retiring.load(ordering: .sequentiallyConsistent) else { return }
        let fresh = Self.newInstanceID()
        let replaced = registered.withLock { current in
            guard current == stale else { return false }
            current = fresh
            return true
        }
        guard replaced else { return }
        do {
            try await start()
        } catch {
            // Cut nothing until a renewal registers it (the renewal finds it missing).
            everywhere(.registered(instance: fresh, validUntil: 0))
        }
    }

    /// Gives back the units of leases unused for a while (all of them with `everything`), so
    /// that other instances may lease them, after sending again the returns that failed before
    /// and giving up the lease calls that failed (their grants go back if they committed);
    /// throws the first give-back's error, once every stripe had its turn. Every other action of
    /// a step runs whatever a give-back does: the tick may have made a journal retry or a parked
    /// cut's wait due, which the machine then counts as in flight, so an action dropped here
    /// would leave the stripe waiting for good.
    ///
    /// Every stripe lets go of its leases before any round trip: after a reconnect, a stripe
    /// stepped only after the give-backs and retries before it (seconds, when PostgreSQL had
    /// been away) kept cutting holds from leases a missed notice had revoked.
    public func returnIdleLeases(everything: Bool = false) async throws {
        if everything { lowerings.add(1, ordering: .sequentiallyConsistent) }
        var giveBacks: [(instance: String, amounts: [AccountUnits])] = []
        for stripe in stripes.indices {
            for action in step(stripe, { _ in everything ? .returnAll : .idleTick }) {
                guard case .giveBack(let instance, let amounts) = action else {
                    run(action, stripe: stripe)
                    continue
                }
                giveBacks.append((instance, amounts))
            }
        }
        var failure: (any Error)?
        do { try await repository.retryOwedCalls() } catch { failure = error }
        for giveBack in giveBacks {
            do {
                try await repository.giveBack(instance: giveBack.instance, amounts: giveBack.amounts)
            } catch {
                failure = failure ?? error
            }
        }
        if let failure { throw failure }
    }

    /// Applies a notification about one account's lease: `.leaseWanted` (another instance ran
    /// short of it), `.overdrawn` (a settlement overdrew it) or `.accountChanged` (its row
    /// changed). Each gives the lease back and forgets it.
    public func notice(_ event: LeaseEvent) {
        switch event {
        case .overdrawn, .accountChanged: lowerings.add(1, ordering: .sequentiallyConsistent)
        default: break
        }
        switch event {
        case .leaseWanted(.user(let id)), .overdrawn(.user(let id)), .accountChanged(.user(let id)):
            step(stripe(ofUser: id), event)
        default:
            everywhere(event)
        }
    }

    /// Stops cutting holds, journals what is queued, returns every lease and ends the
    /// registration. When the journal cannot be written within `patience` (PostgreSQL is
    /// unreachable), or calls in flight keep the registration's row locked as long, returns
    /// false and keeps the registration: it then expires, and the reaper returns the leases only
    /// after the grace that covers the holds not journaled. When PostgreSQL failed the
    /// retirement itself until then, throws that error, with the same outcome.
    @discardableResult
    public func retire(patience: Duration = .seconds(10)) async throws -> Bool {
        retiring.store(true, ordering: .sequentiallyConsistent)
        everywhere(.retire)
        let clock = ContinuousClock(), deadline = clock.now + patience
        while levels.journalQueue > 0 {
            guard clock.now < deadline else { return false }
            try await Task.sleep(for: .milliseconds(20))
        }
        return try await repository.retire(instance: instance, patience: max(deadline - clock.now, .zero))
    }

    /// Returns the leases of instances that stopped renewing.
    public func reapDeadInstances() async throws -> Int { try await repository.reapInstances() }

    private static func newInstanceID() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(getpid())-\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Holds are cut until a second before the registration (renewed at `renewedAt`) expires.
    private static func validUntil(renewedAt: Double) -> Double { renewedAt + Double(registrationTTLSeconds - 1) }

    /// Seconds on CLOCK_BOOTTIME: never steps back, and counts the time the host spent
    /// suspended, as the registration's expiry in PostgreSQL (wall time) does. On the monotonic
    /// clock (until 2026-12-07), which stops while the host sleeps, an instance resumed after a
    /// suspend longer than its registration still took its reaped leases for valid and cut holds
    /// from them (found by a review; in async mode they were answered before the journal refused).
    /// Every time the machines see comes from here: their registration's validity, the cuts'
    /// waits and the wake-ups are compared with one another.
    static func now() -> Double {
        var time = timespec()
        #if os(Linux)
            clock_gettime(CLOCK_BOOTTIME, &time)
        #else
            clock_gettime(CLOCK_MONOTONIC, &time)  // Darwin's counts sleep too
        #endif
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}
