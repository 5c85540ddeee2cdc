import Dispatch
import Foundation
import Synchronization
import TallyCore

/// This instance's leases, in memory: authorize cuts holds from them under one lock, without
/// a database round trip; leases are refilled from PostgreSQL in batches; holds are journaled to
/// PostgreSQL in group commits (docs/enforcement.md, migration 0009).
///
/// Why no interleaving overdraws: a hold is cut only from units this instance leased, and a
/// lease is granted (by `tally_lease`, under the account's row lock) only from what the
/// account has left after every other lease and open hold. Memory never holds more than the
/// lease rows in PostgreSQL: at all times, per account, `free + journal queue + returns in
/// flight = lease row`.
public final class HoldBook: Sendable {
    /// When authorize answers.
    public enum Mode: String, Sendable, CaseIterable {
        /// After the hold's journal batch committed: durable, and a retry on another instance
        /// finds it.
        case sync
        /// As soon as the hold is cut in memory; the journal follows within milliseconds.
        case async
    }

    public let mode: Mode
    private let repository: any LeaseRepository
    private let holdTTLSeconds: Int
    private let state: Mutex<State>

    /// The registration's lifetime; it is renewed every `renewInterval`.
    public static let registrationTTLSeconds = 15
    public static let renewInterval: Duration = .seconds(3)
    /// A lease unused this long goes back to its account. Other instances need not wait for
    /// it: one that runs short asks for leases back at once (`lease-wanted:` notifications).
    public static let idleLeaseSeconds: Double = 30
    /// How long a refill that fell short waits for other instances to hand leases back.
    static let leaseHandBackWait: Duration = .milliseconds(50)
    static let maxJournalBatch = 2_000
    /// A refill asks for this many holds' worth at least, and twice the last grant when that
    /// was used up within a second, so a hot account refills rarely.
    static let leaseMultiple: Int64 = 32
    /// Request ids answered from memory are remembered for 10–20 s, for retries.
    static let recentSeconds: Double = 10

    private struct Entry {
        var free: Int64 = 0
        /// A token that does not limit: nothing to lease.
        var unlimited = false
        /// A limited token with nothing left (`remain_quota <= 0`): asked again every time.
        var exhausted = false
        var lastUsed: Double = 0
        var lastRefill: Double = 0
        var lastGrant: Int64 = 0
    }

    private struct Waiter {
        let hold: JournaledHold
        let instance: String
        let sequence: Int
        var continuation: CheckedContinuation<Cut, any Error>?
    }

    /// What a refill found for one account.
    private struct Refilled {
        let state: LeaseGrant.State
        /// Granted less than asked: the account has nothing more to lease...
        let drained: Bool
        /// ...except what other instances hold, which they were just asked to give back.
        let othersHold: Bool
    }

    private struct State {
        var instance: String
        var validUntil: Double = 0
        var accounts: [LeaseAccount: Entry] = [:]
        var holdIDs: Range<Int64> = 0..<0
        var recent: [String: HoldOutcome] = [:]
        var previousRecent: [String: HoldOutcome] = [:]
        var recentSince: Double = 0
        var journal: [Waiter] = []
        var journalRunning = false
        var enqueued = 0
        var journaled = 0
        var flushWaiters: [(Int, CheckedContinuation<Void, Never>)] = []
        var refillWants: [LeaseAccount: Int64] = [:]
        var refillWaiters: [CheckedContinuation<[LeaseAccount: Refilled], any Error>] = []
        var refillRunning = false

        /// Two generations of remembered request ids, swapped every `recentSeconds`.
        mutating func forgetOldRetries(now: Double) {
            guard now - recentSince >= HoldBook.recentSeconds else { return }
            previousRecent = recent
            recent = [:]
            recentSince = now
        }
    }

    private enum Cut {
        /// Answered: cut and journaled (sync) or queued (async), or a retry of an earlier hold.
        case done(HoldOutcome)
        case short([LeaseAccount: Int64])
        case needIDs
        case lapsed
    }

    public init(repository: any LeaseRepository, holdTTLSeconds: Int, mode: Mode = .sync) {
        self.repository = repository
        self.holdTTLSeconds = holdTTLSeconds
        self.mode = mode
        state = Mutex(State(instance: Self.newInstanceID()))
    }

    /// This instance's current registration id.
    public var instance: String { state.withLock { $0.instance } }

    /// Units leased and not cut yet, and holds waiting for the journal (for metrics).
    public var levels: (leasedUnits: Int64, journalQueue: Int) {
        state.withLock { state in (state.accounts.values.reduce(0) { $0 + $1.free }, state.journal.count) }
    }

    /// Registers the instance; call before the first `reserve`.
    public func start() async throws {
        let instance = self.instance
        let started = Self.now()
        try await repository.register(instance: instance, ttlSeconds: Self.registrationTTLSeconds,
                                      reclaimAfterSeconds: reclaimAfterSeconds)
        state.withLock { $0.validUntil = started + Double(Self.registrationTTLSeconds - 1) }
    }

    /// Leases of a dead instance are reclaimed this long after its registration expired: the
    /// longest a hold answered but not journaled could still be settled (async), or a margin
    /// for a journal batch in flight (sync).
    private var reclaimAfterSeconds: Int { mode == .async ? holdTTLSeconds : 5 }

    // MARK: Reserving

    /// Cuts a hold of `request.amount` from the leases of its user and (limited) token,
    /// refilling them from PostgreSQL when they run short.
    public func reserve(_ request: HoldRequest) async throws -> HoldOutcome {
        var drained: Set<LeaseAccount> = []
        var askedOthers: Set<LeaseAccount> = []
        var lapsedOnce = false
        for _ in 0..<8 {
            switch try await cut(request) {
            case let .done(outcome):
                return outcome
            case .needIDs:
                let block = try await repository.holdIDBlock()
                state.withLock { state in
                    if state.holdIDs.isEmpty { state.holdIDs = block..<(block + 1024) }
                }
            case .lapsed:
                // LeaseService renews every few seconds; if it could not, try once now.
                if lapsedOnce { throw LeaseError.registrationLapsed }
                lapsedOnce = true
                try await renew()
            case let .short(wants):
                // Short again right after a refill that found the account dry: nothing is left.
                if wants.keys.contains(where: drained.contains) { return .insufficient }
                let refilled = try await refill(wants)
                var othersAsked = false
                for (account, result) in refilled where wants[account] != nil {
                    switch result.state {
                    case .unknown: return .unknown
                    case .exhausted: return .exhausted
                    case .ok, .unlimited:
                        guard result.drained else { continue }
                        if result.othersHold, askedOthers.insert(account).inserted {
                            othersAsked = true
                        } else {
                            drained.insert(account)
                        }
                    }
                }
                // Other instances were asked to give their idle leases back (NOTIFY): give
                // them a moment, then lease again.
                if othersAsked { try await Task.sleep(for: Self.leaseHandBackWait) }
            }
        }
        return .insufficient
    }

    /// Cuts the hold under the lock and queues it for the journal in the same step (so the
    /// journal's order is the order of the cuts); in sync mode the answer comes with the commit.
    private func cut(_ request: HoldRequest) async throws -> Cut {
        try await withCheckedThrowingContinuation { continuation in
            let (immediate, startsJournal) = cutAndQueue(request, continuation: mode == .sync ? continuation : nil)
            if startsJournal { Task { await self.runJournal() } }
            if let immediate { continuation.resume(returning: immediate) }
        }
    }

    /// nil when the answer comes later (sync mode, queued for the journal).
    private func cutAndQueue(_ request: HoldRequest, continuation: CheckedContinuation<Cut, any Error>?) -> (Cut?, Bool) {
        let now = Self.now()
        return state.withLock { state -> (Cut?, Bool) in
            guard now < state.validUntil else { return (.lapsed, false) }
            state.forgetOldRetries(now: now)
            if let earlier = state.recent[request.requestID] ?? state.previousRecent[request.requestID] {
                return (.done(earlier), false)
            }
            let userAccount = LeaseAccount.user(request.userID), tokenAccount = LeaseAccount.token(request.tokenID)
            var user = state.accounts[userAccount] ?? Entry()
            // A token seen for the first time is leased even for a free request: the lease
            // tells whether it limits at all and whether it is exhausted.
            let tokenKnown = state.accounts[tokenAccount].map { !$0.exhausted } ?? false
            var token = state.accounts[tokenAccount] ?? Entry()
            let tokenLimits = !token.unlimited
            var wants: [LeaseAccount: Int64] = [:]
            if user.free < request.amount { wants[userAccount] = Self.want(request.amount - user.free, entry: user, now: now) }
            if !tokenKnown || (tokenLimits && token.free < request.amount) {
                wants[tokenAccount] = Self.want(max(request.amount - token.free, 1), entry: token, now: now)
            }
            guard wants.isEmpty else { return (.short(wants), false) }
            guard let id = state.holdIDs.popFirst() else { return (.needIDs, false) }
            user.free -= request.amount
            user.lastUsed = now
            state.accounts[userAccount] = user
            token.free -= tokenLimits ? request.amount : 0
            token.lastUsed = now
            state.accounts[tokenAccount] = token
            let hold = JournaledHold(id: id, request: request, tokenLeased: tokenLimits)
            let held = HoldOutcome.held(holdID: id, amount: request.amount)
            state.recent[request.requestID] = .duplicate(holdID: id, amount: request.amount, status: "held")
            state.enqueued += 1
            state.journal.append(Waiter(hold: hold, instance: state.instance, sequence: state.enqueued,
                                        continuation: continuation))
            let starts = !state.journalRunning
            state.journalRunning = true
            return (continuation == nil ? .done(held) : nil, starts)
        }
    }

    /// Units to ask for when `missing` units are short.
    private static func want(_ missing: Int64, entry: Entry, now: Double) -> Int64 {
        let floor = missing.multipliedReportingOverflow(by: leaseMultiple)
        var want = floor.overflow ? Int64.max / 4 : floor.partialValue
        if now - entry.lastRefill < 1, entry.lastGrant > 0 { want = max(want, min(entry.lastGrant, Int64.max / 8) * 2) }
        return want
    }

    // MARK: Refills

    private func refill(_ wants: [LeaseAccount: Int64]) async throws -> [LeaseAccount: Refilled] {
        try await withCheckedThrowingContinuation { continuation in
            let starts = state.withLock { state in
                state.refillWants.merge(wants, uniquingKeysWith: +)
                state.refillWaiters.append(continuation)
                defer { state.refillRunning = true }
                return !state.refillRunning
            }
            if starts { Task { await self.runRefills() } }
        }
    }

    /// One `tally_lease` call per round for everything asked meanwhile.
    private func runRefills() async {
        while true {
            let round = state.withLock { state -> (String, [LeaseAccount: Int64], [CheckedContinuation<[LeaseAccount: Refilled], any Error>])? in
                guard !state.refillWants.isEmpty else {
                    state.refillRunning = false
                    return nil
                }
                defer {
                    state.refillWants = [:]
                    state.refillWaiters = []
                }
                return (state.instance, state.refillWants, state.refillWaiters)
            }
            guard let (instance, wants, waiters) = round else { return }
            do {
                let grants = try await repository.lease(instance: instance, wants: wants)
                let now = Self.now()
                var byAccount: [LeaseAccount: Refilled] = [:]
                for grant in grants {
                    byAccount[grant.account] = Refilled(state: grant.state, drained: grant.granted < wants[grant.account] ?? 0,
                                                        othersHold: grant.others > 0)
                }
                state.withLock { state in
                    // Granted to a registration since replaced: those units went back when it was reaped.
                    guard state.instance == instance else { return }
                    for grant in grants {
                        var entry = state.accounts[grant.account] ?? Entry()
                        entry.free += grant.granted
                        entry.unlimited = grant.state == .unlimited
                        entry.exhausted = grant.state == .exhausted
                        entry.lastRefill = now
                        entry.lastGrant = grant.granted
                        entry.lastUsed = now
                        state.accounts[grant.account] = entry
                    }
                }
                for waiter in waiters { waiter.resume(returning: byAccount) }
            } catch {
                if error as? LeaseError == .notRegistered { await reregister() }
                for waiter in waiters { waiter.resume(throwing: error) }
            }
        }
    }

    // MARK: Journal

    /// Group commit: one `tally_journal_holds` call for whatever queued meanwhile. A failed
    /// batch stays queued and is written again (journaling is idempotent by hold id).
    private func runJournal() async {
        var failures = 0
        while true {
            let batch = state.withLock { state -> [Waiter] in
                guard let first = state.journal.first else {
                    state.journalRunning = false
                    return []
                }
                let sameInstance = state.journal.prefix(Self.maxJournalBatch).prefix { $0.instance == first.instance }
                return Array(sameInstance)
            }
            guard let first = batch.first else { return }
            do {
                let outcomes = try await repository.journal(instance: first.instance, holds: batch.map(\.hold),
                                                            ttlSeconds: holdTTLSeconds)
                failures = 0
                settleJournaled(batch, outcomes: outcomes)
            } catch {
                failures += 1
                // Sync callers get the error now; their holds stay queued until written.
                let waiting = state.withLock { state -> [CheckedContinuation<Cut, any Error>] in
                    var waiting: [CheckedContinuation<Cut, any Error>] = []
                    for index in state.journal.indices.prefix(batch.count) {
                        if let continuation = state.journal[index].continuation { waiting.append(continuation) }
                        state.journal[index].continuation = nil
                    }
                    return waiting
                }
                for continuation in waiting { continuation.resume(throwing: error) }
                try? await Task.sleep(for: .milliseconds(min(1_000, 50 * failures)))
            }
        }
    }

    /// After a committed batch: retries of earlier holds give their units back to the leases,
    /// waiters get their outcome, flushes waiting for this point resume.
    private func settleJournaled(_ batch: [Waiter], outcomes: [JournalOutcome]) {
        let resumes = state.withLock { state -> ([(CheckedContinuation<Cut, any Error>, HoldOutcome)], [CheckedContinuation<Void, Never>]) in
            // Continuations are read now: a failed round may have answered some meanwhile.
            let waiting = state.journal.prefix(batch.count).map(\.continuation)
            state.journal.removeFirst(batch.count)
            var resumes: [(CheckedContinuation<Cut, any Error>, HoldOutcome)] = []
            for ((waiter, outcome), continuation) in zip(zip(batch, outcomes), waiting) {
                let request = waiter.hold.request
                let result: HoldOutcome
                if outcome.isNew {
                    result = .held(holdID: outcome.holdID, amount: outcome.held)
                } else {
                    // Not cut from the lease rows after all: the units are this lease's again.
                    if state.instance == waiter.instance {
                        state.accounts[.user(request.userID), default: Entry()].free += request.amount
                        if waiter.hold.tokenLeased { state.accounts[.token(request.tokenID), default: Entry()].free += request.amount }
                    }
                    result = .duplicate(holdID: outcome.holdID, amount: outcome.held, status: outcome.status)
                    state.recent[request.requestID] = result
                }
                if let continuation { resumes.append((continuation, result)) }
            }
            state.journaled = batch.last!.sequence
            let journaled = state.journaled
            let ready = state.flushWaiters.filter { $0.0 <= journaled }.map(\.1)
            state.flushWaiters.removeAll { $0.0 <= journaled }
            return (resumes, ready)
        }
        for (continuation, outcome) in resumes.0 { continuation.resume(returning: .done(outcome)) }
        for flush in resumes.1 { flush.resume() }
    }

    /// Returns once every hold cut before the call is journaled.
    public func flush() async {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> Bool in
                guard state.journaled < state.enqueued else { return true }
                state.flushWaiters.append((state.enqueued, continuation))
                return false
            }
            if done { continuation.resume() }
        }
    }

    // MARK: Lease upkeep

    /// Renews the registration; when it was reaped meanwhile, starts over with a new one.
    public func renew() async throws {
        let (instance, started) = (self.instance, Self.now())
        if try await repository.renew(instance: instance, ttlSeconds: Self.registrationTTLSeconds) {
            state.withLock { state in
                if state.instance == instance { state.validUntil = started + Double(Self.registrationTTLSeconds - 1) }
            }
        } else {
            await reregister()
        }
    }

    /// The registration is gone, and with it every lease: forget them and register anew.
    private func reregister() async {
        let fresh = Self.newInstanceID()
        state.withLock { state in
            state.instance = fresh
            state.validUntil = 0
            state.accounts = [:]
        }
        try? await start()
    }

    /// Gives back the units of leases unused for `idleLeaseSeconds` (all of them with
    /// `everything`), so that other instances may lease them.
    public func returnIdleLeases(everything: Bool = false) async throws {
        let now = Self.now()
        let (instance, amounts) = state.withLock { state -> (String, [LeaseAccount: Int64]) in
            var amounts: [LeaseAccount: Int64] = [:]
            for (account, entry) in state.accounts where everything || now - entry.lastUsed >= Self.idleLeaseSeconds {
                if entry.free > 0 { amounts[account] = entry.free }
                state.accounts[account] = nil
            }
            return (state.instance, amounts)
        }
        guard !amounts.isEmpty else { return }
        // Not put back on failure: the call may have committed. Units it did not return stay
        // leased until this instance retires or is reaped.
        try await repository.giveBack(instance: instance, amounts: amounts)
    }

    /// Gives the account's lease back and forgets what it knew (a token's limits changed, or a
    /// settlement overdrew the account); the next hold leases afresh.
    public func forget(_ account: LeaseAccount) async {
        let (instance, free) = state.withLock { state -> (String, Int64) in
            defer { state.accounts[account] = nil }
            return (state.instance, state.accounts[account]?.free ?? 0)
        }
        if free > 0 { try? await repository.giveBack(instance: instance, amounts: [account: free]) }
    }

    /// Stops cutting holds, journals what is queued, returns every lease and ends the
    /// registration. When the journal cannot be written within `patience` (PostgreSQL is
    /// unreachable), returns false and keeps the registration: it then expires, and the reaper
    /// returns the leases only after the grace that covers the holds not journaled.
    @discardableResult
    public func retire(patience: Duration = .seconds(10)) async throws -> Bool {
        let target = state.withLock { state in
            state.validUntil = 0
            return state.enqueued
        }
        let clock = ContinuousClock(), deadline = clock.now + patience
        while state.withLock({ $0.journaled < target }) {
            guard clock.now < deadline else { return false }
            try await Task.sleep(for: .milliseconds(20))
        }
        let instance = state.withLock { state in
            state.accounts = [:]
            return state.instance
        }
        try await repository.retire(instance: instance)
        return true
    }

    /// Returns the leases of instances that stopped renewing.
    public func reapDeadInstances() async throws -> Int { try await repository.reapInstances() }

    private static func newInstanceID() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(getpid())-\(UUID().uuidString.prefix(8).lowercased())"
    }

    private static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
}
