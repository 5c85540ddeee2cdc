import Foundation
import Synchronization
import TallyCore
import TallyPostgres

/// One reservation asked for by `authorize`.
public struct HoldRequest: Sendable, Equatable {
    public let requestID: String
    public let userID: Int64
    public let tokenID: Int64
    public let model: String
    public let amount: Int64
    public let tid: String

    public init(requestID: String, userID: Int64, tokenID: Int64, model: String, amount: Int64, tid: String) {
        self.requestID = requestID
        self.userID = userID
        self.tokenID = tokenID
        self.model = model
        self.amount = amount
        self.tid = tid
    }
}

/// What became of a reservation (see `tally_authorize_batch` in migration 0005).
public enum HoldOutcome: Sendable, Equatable {
    /// A new hold of `amount` units.
    case held(holdID: Int64, amount: Int64)
    /// A hold with this request id exists already; nothing more was reserved.
    case duplicate(holdID: Int64, amount: Int64, status: String)
    /// The user or the limited token cannot cover the amount.
    case insufficient
    /// The limited token has no quota left.
    case exhausted
    /// The user or the token no longer exists.
    case unknown
}

/// What `release` found.
public struct ReleaseOutcome: Sendable, Equatable {
    /// The hold's status after the call: `released`, or `settled` / `expired` when it had
    /// been closed that way before.
    public let status: String
    /// Units returned by this call (0 when the hold was already closed).
    public let returned: Int64
    public let held: Int64
}

/// Holds in PostgreSQL: reserved in batches, closed by release, expiry or settlement (ingest).
public protocol HoldRepository: Sendable {
    /// Decides a batch of reservations in order, in one transaction; outcomes match `requests`.
    /// `durable` false commits without waiting for the WAL flush (see migration 0005).
    func reserve(_ requests: [HoldRequest], ttlSeconds: Int, durable: Bool) async throws -> [HoldOutcome]
    /// Returns an open hold's reservation; idempotent. nil when no hold has this request id.
    func release(requestID: String) async throws -> ReleaseOutcome?
    /// Closes up to `limit` holds past their expiry; returns how many it closed.
    func expireDue(limit: Int) async throws -> Int
    /// Deletes up to `limit` holds closed more than `age` seconds ago; returns how many.
    func purgeClosed(olderThan age: Int, limit: Int) async throws -> Int
    /// Open holds and the units they reserve.
    func openTotals() async throws -> (count: Int64, units: Int64)
}

public struct PostgresHoldRepository: HoldRepository {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    public func reserve(_ requests: [HoldRequest], ttlSeconds: Int, durable: Bool) async throws -> [HoldOutcome] {
        let parameters: [any PostgresEncodable] = [
            PostgresArray.text(requests.map(\.requestID)), PostgresArray.integers(requests.map(\.userID)),
            PostgresArray.integers(requests.map(\.tokenID)), PostgresArray.integers(requests.map(\.amount)),
            PostgresArray.text(requests.map(\.model)), PostgresArray.text(requests.map(\.tid)), ttlSeconds, durable,
        ]
        return try await pool.withConnection { connection in
            // Two batches from different instances that share a hold id in flight can deadlock
            // on the unique index; PostgreSQL aborts one, which is simply run again.
            var attempt = 0
            while true {
                do {
                    return try connection.query(Self.reserveBatch, parameters).map(Self.outcome)
                } catch {
                    guard attempt < 3, (error as? PostgresError).map(Self.isRetryable) == true else { throw error }
                    attempt += 1
                }
            }
        }
    }

    public func release(requestID: String) async throws -> ReleaseOutcome? {
        try await pool.withConnection { connection in
            guard let row = try connection.query(Self.findHold, [requestID]).first else { return nil }
            let (id, status, amount) = (try row.decode(0, as: Int64.self), try row.decode(1, as: String.self), try row.decode(2, as: Int64.self))
            guard status == "held" else { return ReleaseOutcome(status: status, returned: 0, held: amount) }
            let closed = try connection.query(Self.closeHolds, [PostgresArray.integers([id]), "released"])
            if closed.isEmpty {
                // Settled (or expired) by another transaction in the meantime.
                let now = try connection.query(Self.findHold, [requestID]).first?.decode(1, as: String.self) ?? status
                return ReleaseOutcome(status: now, returned: 0, held: amount)
            }
            return ReleaseOutcome(status: "released", returned: amount, held: amount)
        }
    }

    public func expireDue(limit: Int) async throws -> Int {
        try await pool.withConnection { connection in
            try connection.query(Self.expire, [limit])[0].decode(0, as: Int.self)
        }
    }

    public func purgeClosed(olderThan age: Int, limit: Int) async throws -> Int {
        try await pool.withConnection { connection in
            try connection.query(Self.purge, [age, limit])[0].decode(0, as: Int.self)
        }
    }

    public func openTotals() async throws -> (count: Int64, units: Int64) {
        try await pool.withConnection { connection in
            let row = try connection.query(Self.open)[0]
            return (try row.decode(0), try row.decode(1))
        }
    }

    static func isRetryable(_ error: PostgresError) -> Bool {
        error.sqlState == SQLState.deadlockDetected || error.sqlState == SQLState.serializationFailure
    }

    static func outcome(_ row: PostgresRow) throws -> HoldOutcome {
        switch try row.decode(2, as: String.self) {
        case "held": .held(holdID: try row.decode(1), amount: try row.decode(3))
        case "duplicate": .duplicate(holdID: try row.decode(1), amount: try row.decode(3), status: try row.decode(4))
        case "insufficient": .insufficient
        case "exhausted": .exhausted
        default: .unknown
        }
    }

    // MARK: SQL

    static let reserveBatch = PreparedStatement("holds_reserve_batch", """
        SELECT request_id, hold_id, outcome, held, hold_status
        FROM tally_authorize_batch($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7, $8)
        """)
    static let findHold = PreparedStatement("holds_find", "SELECT id, status, amount FROM holds WHERE request_id = $1")
    static let closeHolds = PreparedStatement("holds_close", "SELECT request_id, amount FROM tally_close_holds($1::bigint[], $2)")
    static let expire = PreparedStatement("holds_expire", """
        SELECT count(*) FROM tally_close_holds(ARRAY(
            SELECT id FROM holds WHERE status = 'held' AND expires_at < now() ORDER BY expires_at LIMIT $1), 'expired')
        """)
    static let purge = PreparedStatement("holds_purge", """
        WITH gone AS (DELETE FROM holds WHERE id IN (
            SELECT id FROM holds WHERE status <> 'held' AND closed_at < now() - make_interval(secs => $1) LIMIT $2)
            RETURNING 1)
        SELECT count(*) FROM gone
        """)
    static let open = PreparedStatement("holds_open_totals",
        "SELECT count(*), coalesce(sum(amount), 0)::bigint FROM holds WHERE status = 'held'")
}

/// Group commit for reservations: concurrent `reserve` calls are gathered into batches decided
/// by one statement each, so a hot account costs one row update per batch instead of one
/// locked transaction per request. At most `concurrentBatches` batches run at once; whatever
/// arrives meanwhile waits for the next one, so batches grow with the load.
public final class HoldReserver: Sendable {
    private let repository: any HoldRepository
    private let ttlSeconds: Int
    private let durable: Bool
    private let maxBatch: Int
    private let concurrentBatches: Int
    private let state = Mutex<State>(State())

    private struct State {
        var pending: [(HoldRequest, CheckedContinuation<HoldOutcome, any Error>)] = []
        var running = 0
    }

    public init(repository: any HoldRepository, ttlSeconds: Int, durable: Bool = true, maxBatch: Int = 1000,
                concurrentBatches: Int = 2) {
        self.repository = repository
        self.ttlSeconds = ttlSeconds
        self.durable = durable
        self.maxBatch = maxBatch
        self.concurrentBatches = concurrentBatches
    }

    /// Reserves `request.amount`; returns after the batch holding it has committed.
    public func reserve(_ request: HoldRequest) async throws -> HoldOutcome {
        try await withCheckedThrowingContinuation { continuation in
            let startsBatch = state.withLock { state in
                state.pending.append((request, continuation))
                guard state.running < concurrentBatches else { return false }
                state.running += 1
                return true
            }
            if startsBatch { Task { await self.drain() } }
        }
    }

    /// Runs batches until nothing is pending.
    private func drain() async {
        while let batch = nextBatch() {
            do {
                let outcomes = try await repository.reserve(batch.map(\.0), ttlSeconds: ttlSeconds, durable: durable)
                for (waiter, outcome) in zip(batch, outcomes) { waiter.1.resume(returning: outcome) }
            } catch {
                for waiter in batch { waiter.1.resume(throwing: error) }
            }
        }
    }

    private func nextBatch() -> [(HoldRequest, CheckedContinuation<HoldOutcome, any Error>)]? {
        state.withLock { state in
            guard !state.pending.isEmpty else {
                state.running -= 1
                return nil
            }
            let count = min(maxBatch, state.pending.count)
            let batch = Array(state.pending.prefix(count))
            state.pending.removeFirst(count)
            return batch
        }
    }
}
