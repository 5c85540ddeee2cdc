import Foundation
import Synchronization
import TallyCore
import TallyPostgres

/// The instance's side of the lease books in PostgreSQL (migration 0009).
public protocol LeaseRepository: Sendable {
    /// Registers this instance; its registration lasts `ttlSeconds` unless renewed, and its
    /// leases are reclaimed `reclaimAfterSeconds` after that.
    func register(instance: String, ttlSeconds: Int, reclaimAfterSeconds: Int) async throws
    /// Renews the registration; false when it is gone (reaped): the leases are lost.
    func renew(instance: String, ttlSeconds: Int) async throws -> Bool
    /// Returns every lease of this instance and ends its registration (journal first); false
    /// when calls in flight kept its registration's row locked for `patience`, or the error of
    /// the last try when PostgreSQL failed it until then.
    func retire(instance: String, patience: Duration) async throws -> Bool
    /// Leases up to `wants` units of each account; throws `LeaseError.notRegistered` when the
    /// registration is gone. A call that fails is owed a give-up (``retryOwedCalls()``): if it
    /// committed before its answer was lost, its grant goes back.
    func lease(instance: String, wants: [AccountUnits]) async throws -> [LeaseGrant]
    /// Gives unused lease units back. A return that fails is owed: ``retryOwedCalls()`` sends
    /// it again, and PostgreSQL applies each return once, however often it is sent.
    func giveBack(instance: String, amounts: [AccountUnits]) async throws
    /// Sends every owed return again and gives up every failed lease call (refills and cold
    /// keys' lookups) of this repository's instances; throws the first failure (those calls stay
    /// owed).
    func retryOwedCalls() async throws
    /// Stores holds cut from the leases; outcomes in the order of `holds`. Throws
    /// `LeaseError.notRegistered`, storing nothing, when the registration is gone.
    func journal(instance: String, holds: [JournaledHold], ttlSeconds: Int) async throws -> [JournalOutcome]
    /// The holds stored for these request ids in these scopes, as retries' answers
    /// (`.duplicate`), in the order asked; nil where there is none.
    func storedHolds(_ requests: [ScopedRequestID]) async throws -> [HoldOutcome?]
    /// The first of 1024 fresh hold ids.
    func holdIDBlock() async throws -> Int64
    /// Returns the leases of instances that stopped renewing; how many instances were reaped.
    func reapInstances() async throws -> Int
}

/// Lease calls of this process (returns, or refills and lookups) whose outcome is not known: in
/// flight, or failed (owed). Each has an id that PostgreSQL stores with what it did, so a failed
/// return is sent again and applied once (migration 0033) and a failed lease is given up, its
/// grant returned if it committed (0034); the smallest id not yet answered tells PostgreSQL which
/// ids it may forget.
final class UnansweredCalls: Sendable {
    struct Call: Sendable {
        let id: Int64
        let instance: String
        /// What a return gives back (none for a lease call: a give-up returns what it granted).
        let amounts: [AccountUnits]
    }

    private struct State {
        var nextID: Int64 = 1
        var unanswered: [Int64: Call] = [:]
        var failed: Set<Int64> = []
    }

    private let state = Mutex(State())

    init() {}

    /// Each instance's lease calls, process-wide: refills and cold keys' lookups (which know only
    /// the instance they lease for) take their ids from one sequence per instance, as PostgreSQL
    /// keys them.
    private static let ofInstances = Mutex<[String: UnansweredCalls]>([:])

    static func of(instance: String) -> UnansweredCalls {
        ofInstances.withLock { all in
            if let known = all[instance] { return known }
            let made = UnansweredCalls()
            all[instance] = made
            return made
        }
    }

    /// Forgets a retired instance's calls (its registration took their rows with it).
    static func forget(instance: String) { _ = ofInstances.withLock { $0.removeValue(forKey: instance) } }

    func open(instance: String, amounts: [AccountUnits]) -> Call {
        state.withLock { state in
            let call = Call(id: state.nextID, instance: instance, amounts: amounts)
            state.nextID += 1
            state.unanswered[call.id] = call
            return call
        }
    }

    /// The failed calls, oldest first, marked as in flight again.
    func failed() -> [Call] {
        state.withLock { state in
            let owed = state.failed.sorted().compactMap { state.unanswered[$0] }
            state.failed = []
            return owed
        }
    }

    func failed(_ id: Int64) { state.withLock { _ = $0.failed.insert(id) } }

    func answered(_ id: Int64) { state.withLock { _ = $0.unanswered.removeValue(forKey: id) } }

    /// The smallest id of `instance` not answered yet (`sending` included): PostgreSQL may
    /// forget every smaller one.
    func owedFrom(instance: String, sending: Int64) -> Int64 {
        state.withLock { state in
            state.unanswered.values.lazy.filter { $0.instance == instance }.map(\.id).min() ?? sending
        }
    }

    /// Runs a lease call (a refill, a lookup) under a fresh id, on a connection already held, so
    /// that a call that never reached PostgreSQL owes nothing. Answered when it returns or when
    /// PostgreSQL refused it (an error with its SQLSTATE: the statement rolled back); owed a
    /// give-up when its answer was lost (a broken connection, an answer that could not be read).
    @available(*, noasync)
    func lease<T>(instance: String, _ call: (_ id: Int64, _ owedFrom: Int64) throws -> T) throws -> T {
        let opened = open(instance: instance, amounts: [])
        do {
            let result = try call(opened.id, owedFrom(instance: instance, sending: opened.id))
            answered(opened.id)
            return result
        } catch {
            if Self.rolledBack(error) { answered(opened.id) } else { failed(opened.id) }
            throw error
        }
    }

    /// Whether PostgreSQL refused the statement that threw `error`: a statement of its own, it
    /// rolled back, and owes no give-up.
    static func rolledBack(_ error: any Error) -> Bool { (error as? PostgresError)?.provesRollback == true }

    /// Runs `call` for an open or owed id; answered when it returns, owed again when it throws.
    func perform<T>(_ opened: Call, _ call: (_ id: Int64, _ owedFrom: Int64) async throws -> T) async throws -> T {
        do {
            let result = try await call(opened.id, owedFrom(instance: opened.instance, sending: opened.id))
            answered(opened.id)
            return result
        } catch {
            failed(opened.id)
            throw error
        }
    }
}

/// A request id and what it is authorized for: what a refused authorization looks up among
/// the holds stored.
public struct ScopedRequestID: Sendable, Hashable {
    public let requestID: String
    public let scope: RequestScope

    public init(requestID: String, scope: RequestScope) {
        self.requestID = requestID
        self.scope = scope
    }

    /// The request id compared by bytes (``ExactText``): a refusal whose id only looked like a
    /// stored hold's was answered with that hold, and ran upstream with nothing reserved.
    public static func == (lhs: ScopedRequestID, rhs: ScopedRequestID) -> Bool {
        ExactText(lhs.requestID) == ExactText(rhs.requestID) && lhs.scope == rhs.scope
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(ExactText(requestID))
        hasher.combine(scope)
    }
}

/// A set of instance names, shared by copies of a repository.
final class InstanceNames: Sendable {
    private let names = Mutex<Set<String>>([])

    func insert(_ name: String) { _ = names.withLock { $0.insert(name) } }
    func remove(_ name: String) { _ = names.withLock { $0.remove(name) } }
    var all: [String] { names.withLock { $0.sorted() } }
}

public enum LeaseError: Error, Equatable {
    /// The registration was reaped (this instance did not renew it in time).
    case notRegistered
    /// This instance could not renew its registration in time, so it may not cut holds from
    /// its leases until it does (PostgreSQL is unreachable).
    case registrationLapsed
    /// The journal committed but answered no hold for this request id (an earlier hold of the
    /// id purged while the call ran): its batch is answered as a journal whose answer was lost.
    case journalAnswerIncomplete(requestID: String)
}

public struct PostgresLeaseRepository: LeaseRepository {
    let pool: PostgresPool
    private let returns = UnansweredCalls()
    /// The instances this repository registered, whose failed lease calls it gives up.
    private let instances = InstanceNames()

    public init(pool: PostgresPool) { self.pool = pool }

    public func register(instance: String, ttlSeconds: Int, reclaimAfterSeconds: Int) async throws {
        instances.insert(instance)
        try await pool.withConnection { connection in
            _ = try connection.query(Self.registerInstance, [instance, ttlSeconds, reclaimAfterSeconds])
        }
    }

    public func renew(instance: String, ttlSeconds: Int) async throws -> Bool {
        try await pool.withConnection { connection in
            !(try connection.query(Self.renewInstance, [instance, ttlSeconds]).isEmpty)
        }
    }

    /// The reaping skips a registration whose row a lease or journal call holds (a reaper never
    /// waits for a live instance), so it is tried again until the row is gone: a retirement that
    /// met a refill in flight returned nothing, and its leases stayed out until the reaper's
    /// grace passed (20 s in sync mode, the hold TTL in async mode). A try that failed in a way
    /// the next may not is tried again too, after pauses that double up to half a second: the
    /// reaping was aborted to break a deadlock (on Citus a shutdown's retirement met one in CI),
    /// its connection broke (the next try takes another), or PostgreSQL was short of something.
    /// The reaping is one transaction, so a failed try changed nothing, and one whose commit went
    /// unanswered reads as done on the next (the registration is gone). When the patience runs
    /// out after such a failure, that error is thrown.
    public func retire(instance: String, patience: Duration) async throws -> Bool {
        let clock = ContinuousClock(), deadline = clock.now + patience
        var failure: PostgresError?, pause = Duration.milliseconds(20)
        while true {
            do {
                if try await retireOnce(instance: instance) {
                    instances.remove(instance)
                    UnansweredCalls.forget(instance: instance)
                    return true
                }
                failure = nil
            } catch let error as PostgresError where error.isLostRace || error.isConnectionFailure || error.isTemporary
            {
                failure = error
            }
            guard clock.now < deadline else {
                if let failure { throw failure }
                return false
            }
            try await Task.sleep(for: failure == nil ? .milliseconds(20) : pause)
            if failure != nil { pause = min(pause * 2, .milliseconds(500)) }
        }
    }

    /// True when the registration is gone; false when another call holds its row.
    private func retireOnce(instance: String) async throws -> Bool {
        try await pool.withConnection { connection in
            try connection.query(Self.retireInstance, [instance])[0].decode(0, as: Int64.self) > 0
                || connection.query(Self.instanceRegistered, [instance]).isEmpty
        }
    }

    public func lease(instance: String, wants: [AccountUnits]) async throws -> [LeaseGrant] {
        let calls = UnansweredCalls.of(instance: instance), accounts = Self.accountArrays(wants)
        return try await Self.retried {
            try await pool.withConnection { connection in
                try calls.lease(instance: instance) { id, owedFrom in
                    try connection.query(Self.leaseAccounts, [instance, id, owedFrom] + accounts).map { row in
                        let id: Int64 = try row.decode(1)
                        return LeaseGrant(
                            account: try row.decode(0, as: String.self) == "user" ? .user(id) : .token(id),
                            granted: try row.decode(2),
                            state: LeaseGrant.State(rawValue: try row.decode(3)) ?? .unknown,
                            others: try row.decode(4))
                    }
                }
            }
        }
    }

    public func giveBack(instance: String, amounts: [AccountUnits]) async throws {
        try await send(returns.open(instance: instance, amounts: amounts))
    }

    public func retryOwedCalls() async throws {
        var failure: (any Error)?
        for owed in returns.failed() {
            do { try await send(owed) } catch { failure = failure ?? error }
        }
        // Give-ups stop at the first that fails (it may have waited its lock timeout): the rest
        // wait for the next upkeep, which must not be held up past the registration's renewal.
        var owed = instances.all.flatMap { UnansweredCalls.of(instance: $0).failed() }[...]
        while let next = owed.first {
            do {
                try await giveUp(next)
                owed.removeFirst()
            } catch {
                for rest in owed.dropFirst() { UnansweredCalls.of(instance: rest.instance).failed(rest.id) }
                failure = failure ?? error
                break
            }
        }
        if let failure { throw failure }
    }

    /// Sends one return under its id; when it fails, it stays owed.
    private func send(_ owed: UnansweredCalls.Call) async throws {
        try await returns.perform(owed) { id, owedFrom in
            let parameters: [any PostgresEncodable] = [owed.instance, id, owedFrom] + Self.accountArrays(owed.amounts)
            try await Self.retried {
                try await pool.withConnection { connection in
                    _ = try connection.query(Self.returnLeases, parameters)
                }
            }
        }
    }

    /// Gives up a lease call whose answer never came (migration 0034); when that fails too, the
    /// call stays owed.
    private func giveUp(_ owed: UnansweredCalls.Call) async throws {
        try await UnansweredCalls.of(instance: owed.instance).perform(owed) { id, owedFrom in
            try await Self.retried {
                try await pool.withConnection { connection in
                    _ = try connection.query(Self.giveUpLeaseCall, [owed.instance, id, owedFrom])
                }
            }
        }
    }

    public func journal(instance: String, holds: [JournaledHold], ttlSeconds: Int) async throws -> [JournalOutcome] {
        let requests = holds.map(\.request)
        let parameters: [any PostgresEncodable] = [
            instance, PostgresArray.integers(holds.map(\.id)), PostgresArray.text(requests.map(\.requestID)),
            PostgresArray.integers(requests.map(\.userID)), PostgresArray.integers(requests.map(\.tokenID)),
            PostgresArray.integers(requests.map(\.amount)), PostgresArray.text(requests.map(\.model)),
            PostgresArray.text(requests.map(\.tid)),
            "{" + holds.map { $0.tokenLeased ? "t" : "f" }.joined(separator: ",") + "}",
            ttlSeconds,
        ]
        let stored = try await Self.retried {
            try await pool.withConnection { connection in
                try connection.query(Self.journalHolds, parameters).map { row in
                    (
                        requestID: ExactText(try row.decode(0, as: String.self)),
                        id: try row.decode(1, as: Int64.self), held: try row.decode(2, as: Int64.self),
                        status: try row.decode(3, as: String.self),
                        scope: RequestScope(
                            userID: try row.decode(4), tokenID: try row.decode(5), model: try row.decode(6))
                    )
                }
            }
        }
        // By request id, not by position: a hold whose request id was stored before has no row
        // when that earlier hold was purged between the function's insert and its read-back,
        // and by position every later hold took its neighbour's answer (a new hold taken for a
        // retry, its units put back in memory while its lease row paid for it).
        let byRequest = Dictionary(stored.map { ($0.requestID, $0) }, uniquingKeysWith: { first, _ in first })
        return try holds.map { hold in
            guard let stored = byRequest[ExactText(hold.request.requestID)] else {
                throw LeaseError.journalAnswerIncomplete(requestID: hold.request.requestID)
            }
            // A stored hold with another id is an earlier authorization of the request id.
            return JournalOutcome(
                holdID: stored.id, held: stored.held, status: stored.status, scope: stored.scope,
                isNew: stored.id == hold.id)
        }
    }

    public func storedHolds(_ requests: [ScopedRequestID]) async throws -> [HoldOutcome?] {
        let parameters: [any PostgresEncodable] = [PostgresArray.text(requests.map(\.requestID))]
        let stored = try await pool.withConnection { connection in
            try connection.query(Self.storedHoldsOfRequests, parameters).map { row in
                (
                    ScopedRequestID(
                        requestID: try row.decode(0),
                        scope: RequestScope(
                            userID: try row.decode(1), tokenID: try row.decode(5), model: try row.decode(6))
                    ),
                    HoldOutcome.duplicate(
                        holdID: try row.decode(2, as: Int64.self), amount: try row.decode(3, as: Int64.self),
                        status: try row.decode(4, as: String.self))
                )
            }
        }
        // A request id is unique among holds; one of another scope is not this request's.
        let byRequest = Dictionary(stored, uniquingKeysWith: { first, _ in first })
        return requests.map { byRequest[$0] }
    }

    public func holdIDBlock() async throws -> Int64 {
        try await pool.withConnection { connection in
            try connection.query(Self.nextHoldIDBlock)[0].decode(0)
        }
    }

    public func reapInstances() async throws -> Int {
        try await pool.withConnection { connection in
            try connection.query(Self.reap)[0].decode(0)
        }
    }

    /// Runs one call of the lease books again when PostgreSQL aborted it to break a deadlock
    /// (``DeadlockBackoff/leases``): several instances lease, return and journal for the same
    /// accounts, and an aborted call changed nothing (the journal is idempotent by hold id).
    /// Each try takes a pool connection of its own, so the pause holds none. Errors leave as
    /// ``translated(_:)`` says.
    private static func retried<T>(_ body: () async throws -> T) async throws -> T {
        do { return try await retryingDeadlocks(pausing: .leases, body) } catch { throw translated(error) }
    }

    /// `tally_lease`'s and `tally_journal_holds`' "not registered" as a `LeaseError`; anything
    /// else as it is.
    private static func translated(_ error: any Error) -> any Error {
        (error as? PostgresError)?.sqlState == notRegisteredState ? LeaseError.notRegistered : error
    }

    /// The accounts' parameters of `tally_lease` and `tally_return_leases`: the users' ids and
    /// amounts and the tokens' ids and amounts, each in id order (the lock order).
    private static func accountArrays(_ amounts: [AccountUnits]) -> [any PostgresEncodable] {
        var users: [(Int64, Int64)] = [], tokens: [(Int64, Int64)] = []
        for amount in amounts {
            switch amount.account {
            case .user(let id): users.append((id, amount.units))
            case .token(let id): tokens.append((id, amount.units))
            }
        }
        users.sort { $0.0 < $1.0 }
        tokens.sort { $0.0 < $1.0 }
        return [
            PostgresArray.integers(users.map(\.0)), PostgresArray.integers(users.map(\.1)),
            PostgresArray.integers(tokens.map(\.0)), PostgresArray.integers(tokens.map(\.1)),
        ]
    }

    // MARK: SQL

    /// Raised by `tally_lease` and `tally_journal_holds` when the registration is gone.
    static let notRegisteredState = "T0L01"

    static let registerInstance = PreparedStatement(
        "leases_register",
        """
        WITH registered AS (INSERT INTO tally_instances (id, reclaim_after_seconds) VALUES ($1, $3) RETURNING id)
        INSERT INTO tally_instance_renewals (instance_id, expires_at)
        SELECT id, now() + make_interval(secs => $2) FROM registered
        """)
    /// Touches only the renewal row (migration 0011): journal batches and leases lock the
    /// instance's row, and a renewal must never wait for them.
    static let renewInstance = PreparedStatement(
        "leases_renew",
        """
        UPDATE tally_instance_renewals SET expires_at = now() + make_interval(secs => $2) WHERE instance_id = $1
        RETURNING 1
        """)
    static let retireInstance = PreparedStatement("leases_retire", "SELECT tally_reap_instances($1)")
    static let instanceRegistered = PreparedStatement(
        "leases_registered", "SELECT 1 FROM tally_instances WHERE id = $1")
    static let leaseAccounts = PreparedStatement(
        "leases_lease",
        """
        SELECT kind, account_id, granted, state, others
        FROM tally_lease_call($1, $2, $3, false, $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
        """)
    static let giveUpLeaseCall = PreparedStatement(
        "leases_give_up", "SELECT tally_give_up_lease_call($1, $2, $3)")
    static let returnLeases = PreparedStatement(
        "leases_return",
        "SELECT tally_return_leases($1, $2, $3, $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])")
    static let journalHolds = PreparedStatement(
        "leases_journal",
        """
        SELECT request_id, hold_id, held, hold_status, hold_user_id, hold_token_id, hold_model FROM tally_journal_holds(
            $1, $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::boolean[], $10)
        """)
    static let storedHoldsOfRequests = PreparedStatement(
        "leases_stored_holds",
        "SELECT request_id, user_id, id, amount, status, token_id, model FROM holds WHERE request_id = ANY ($1::text[])"
    )
    static let nextHoldIDBlock = PreparedStatement(
        "leases_hold_id_block", "SELECT nextval(pg_get_serial_sequence('holds', 'id'))")
    static let reap = PreparedStatement("leases_reap", "SELECT tally_reap_instances()")
}
