import Dispatch
import Foundation
import Synchronization
import TallyCore

/// This instance's leases: the shell around ``LeaseMachine`` (TallyCore), which decides
/// everything — when to cut, refill, journal, give back, answer. The book feeds it events
/// under a lock, with the time, and runs the actions it returns against PostgreSQL
/// (``LeaseRepository``): refills, journal batches, returns, hold-id blocks, renewals, wake-ups.
/// Authorize waits only for its own answer (docs/enforcement.md, migration 0009).
public final class HoldBook: Sendable {
    public let mode: HoldCommitMode
    private let repository: any LeaseRepository
    private let holdTTLSeconds: Int
    private let book: Mutex<Book>
    private let registered: Mutex<String>

    /// The registration's lifetime; it is renewed every `renewInterval`.
    public static let registrationTTLSeconds = 15
    public static let renewInterval: Duration = .seconds(3)
    /// Hold ids come from the `holds` sequence (INCREMENT BY 1024) a block at a time.
    static let holdIDBlock: Int64 = 1024

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

    public init(repository: any LeaseRepository, holdTTLSeconds: Int, mode: HoldCommitMode = .sync) {
        self.repository = repository
        self.holdTTLSeconds = holdTTLSeconds
        self.mode = mode
        book = Mutex(Book(machine: LeaseMachine(policy: LeasePolicy(commit: mode))))
        registered = Mutex(Self.newInstanceID())
    }

    /// This instance's current registration id.
    public var instance: String { registered.withLock { $0 } }

    /// Units leased and not cut yet, and holds waiting for the journal (for metrics).
    public var levels: (leasedUnits: Int64, journalQueue: Int) {
        book.withLock { ($0.machine.leasedUnits, $0.machine.journalQueueLength) }
    }

    /// Registers the instance; call before the first `reserve`.
    public func start() async throws {
        let instance = self.instance, started = Self.now()
        try await repository.register(instance: instance, ttlSeconds: Self.registrationTTLSeconds,
                                      reclaimAfterSeconds: reclaimAfterSeconds)
        step(.registered(instance: instance, validUntil: Self.validUntil(renewedAt: started)))
    }

    /// Leases of a dead instance are reclaimed this long after its registration expired: the
    /// longest a hold answered but not journaled could still be settled (async), or a margin
    /// for a journal batch in flight (sync).
    private var reclaimAfterSeconds: Int { mode == .async ? holdTTLSeconds : 5 }

    /// Cuts a hold of `request.amount` from the leases of its user and (limited) token,
    /// refilling them from PostgreSQL when they run short.
    public func reserve(_ request: HoldRequest) async throws -> HoldOutcome {
        try await withCheckedThrowingContinuation { continuation in
            step { book in
                let ticket = book.ticket()
                book.holds[ticket] = continuation
                return .cut(ticket, request)
            }.forEach(run)
        }
    }

    /// Returns once every hold cut before the call is journaled.
    public func flush() async {
        await withCheckedContinuation { continuation in
            step { book in
                let ticket = book.ticket()
                book.flushes[ticket] = continuation
                return .flush(ticket)
            }.forEach(run)
        }
    }

    // MARK: Running the machine

    /// Hands the machine one event and runs what it asks for.
    private func step(_ event: LeaseEvent, error: (any Error)? = nil) {
        step(error: error) { _ in event }.forEach(run)
    }

    /// Hands the machine one event (made under the lock, so it may register its caller) and
    /// resumes the callers it answered; returns the rest of its actions, to be run.
    private func step(error: (any Error)? = nil, _ event: (inout Book) -> LeaseEvent) -> [LeaseAction] {
        let now = Self.now()
        let (resumes, work) = book.withLock { book -> ([Resume], [LeaseAction]) in
            var resumes: [Resume] = [], work: [LeaseAction] = []
            let event = event(&book)
            for action in book.machine.handle(event, at: now) {
                switch action {
                case let .answer(ticket, answer):
                    guard let continuation = book.holds.removeValue(forKey: ticket) else { continue }
                    resumes.append(.hold(continuation, answer))
                case let .flushed(ticket):
                    guard let continuation = book.flushes.removeValue(forKey: ticket) else { continue }
                    resumes.append(.flush(continuation))
                default:
                    work.append(action)
                }
            }
            return (resumes, work)
        }
        for resume in resumes {
            switch resume {
            case let .hold(continuation, .outcome(outcome)): continuation.resume(returning: outcome)
            case let .hold(continuation, .failed(failure)):
                continuation.resume(throwing: Self.error(for: failure, error))
            case let .flush(continuation): continuation.resume()
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

    /// Runs one I/O action in a task of its own; its outcome goes back to the machine.
    private func run(_ action: LeaseAction) {
        switch action {
        case let .refill(round, instance, wants):
            Task {
                do {
                    step(.refillGranted(round: round, try await repository.lease(instance: instance, wants: wants)))
                } catch {
                    if error as? LeaseError == .notRegistered { await reregister() }
                    step(.refillFailed(round: round), error: error)
                }
            }
        case let .journal(batch, instance, holds):
            Task {
                do {
                    let outcomes = try await repository.journal(instance: instance, holds: holds,
                                                                ttlSeconds: holdTTLSeconds)
                    step(.journalCommitted(batch: batch, outcomes))
                } catch {
                    step(.journalFailed(batch: batch), error: error)
                }
            }
        case let .giveBack(instance, amounts):
            // Not put back on failure: the call may have committed. Units it did not return
            // stay leased until this instance retires or is reaped.
            Task { try? await repository.giveBack(instance: instance, amounts: amounts) }
        case .fetchHoldIDs:
            Task {
                do {
                    step(.holdIDsGranted(first: try await repository.holdIDBlock(), count: Self.holdIDBlock))
                } catch {
                    step(.holdIDsFailed, error: error)
                }
            }
        case .renewRegistration:
            Task {
                do { try await renew() } catch { step(.renewalFailed) }
            }
        case let .wake(at):
            Task {
                try? await Task.sleep(for: .seconds(max(0, at - Self.now())))
                step(.clock)
            }
        case .answer, .flushed:
            break
        }
    }

    // MARK: Lease upkeep

    /// Renews the registration; when it was reaped meanwhile, starts over with a new one.
    public func renew() async throws {
        let (instance, started) = (self.instance, Self.now())
        if try await repository.renew(instance: instance, ttlSeconds: Self.registrationTTLSeconds) {
            step(.registered(instance: instance, validUntil: Self.validUntil(renewedAt: started)))
        } else {
            await reregister()
        }
    }

    /// The registration is gone, and with it every lease: register anew.
    private func reregister() async {
        let fresh = Self.newInstanceID()
        registered.withLock { $0 = fresh }
        do {
            try await start()
        } catch {
            // Cut nothing until a renewal registers it (the renewal finds it missing).
            step(.registered(instance: fresh, validUntil: 0))
        }
    }

    /// Gives back the units of leases unused for a while (all of them with `everything`), so
    /// that other instances may lease them.
    public func returnIdleLeases(everything: Bool = false) async throws {
        for action in step({ _ in everything ? .returnAll : .idleTick }) {
            guard case let .giveBack(instance, amounts) = action else {
                run(action)
                continue
            }
            try await repository.giveBack(instance: instance, amounts: amounts)
        }
    }

    /// Applies a notification about one account's lease: `.leaseWanted` (another instance ran
    /// short of it), `.overdrawn` (a settlement overdrew it) or `.accountChanged` (its row
    /// changed). Each gives the lease back and forgets it.
    public func notice(_ event: LeaseEvent) {
        step(event)
    }

    /// Stops cutting holds, journals what is queued, returns every lease and ends the
    /// registration. When the journal cannot be written within `patience` (PostgreSQL is
    /// unreachable), returns false and keeps the registration: it then expires, and the reaper
    /// returns the leases only after the grace that covers the holds not journaled.
    @discardableResult
    public func retire(patience: Duration = .seconds(10)) async throws -> Bool {
        step(.retire)
        let clock = ContinuousClock(), deadline = clock.now + patience
        while levels.journalQueue > 0 {
            guard clock.now < deadline else { return false }
            try await Task.sleep(for: .milliseconds(20))
        }
        try await repository.retire(instance: instance)
        return true
    }

    /// Returns the leases of instances that stopped renewing.
    public func reapDeadInstances() async throws -> Int { try await repository.reapInstances() }

    private static func newInstanceID() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(getpid())-\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Holds are cut until a second before the registration (renewed at `renewedAt`) expires.
    private static func validUntil(renewedAt: Double) -> Double { renewedAt + Double(registrationTTLSeconds - 1) }

    private static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
}
