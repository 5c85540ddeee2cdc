import Foundation
import Synchronization
import TallyCore
import TallyPostgres

/// What `release` found.
public struct ReleaseOutcome: Sendable, Equatable {
    /// The hold's status after the call: `released`, or `settled` / `expired` when it had
    /// been closed that way before.
    public let status: String
    /// Units returned by this call (0 when the hold was already closed).
    public let returned: Int64
    public let held: Int64
}

/// Holds in PostgreSQL (journaled by ``HoldBook``), closed by release, expiry or settlement
/// (ingest).
public protocol HoldRepository: Sendable {
    /// Returns an open hold's reservation; idempotent. nil when no hold has this request id.
    /// The hold of `requestID` returned, when it is still held; with `holdID` (authorize's
    /// answer) only that hold: a release for another request that used the id never closes it.
    func release(requestID: String, holdID: Int64?) async throws -> ReleaseOutcome?
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

    /// A try PostgreSQL aborted to break a deadlock (it locks the hold, then its accounts)
    /// changed nothing and is run again, as the lease books' calls are.
    public func release(requestID: String, holdID: Int64? = nil) async throws -> ReleaseOutcome? {
        try await retryingDeadlocks(pausing: .leases) { try await releaseOnce(requestID: requestID, holdID: holdID) }
    }

    private func releaseOnce(requestID: String, holdID: Int64?) async throws -> ReleaseOutcome? {
        try await pool.withConnection { connection in
            guard let row = try connection.query(Self.findHold, [requestID, holdID]).first else { return nil }
            let (id, status, amount) = (
                try row.decode(0, as: Int64.self), try row.decode(1, as: String.self), try row.decode(2, as: Int64.self)
            )
            guard status == "held" else { return ReleaseOutcome(status: status, returned: 0, held: amount) }
            // Closing skips a hold another transaction has locked (a settlement, the sweeper):
            // then wait for that one and answer what it left, or close the hold if it rolled back.
            // (Read at once, the hold still said held, and the release answered held with nothing
            // returned, which a gateway may take for done.)
            for _ in 0..<Self.releaseTries {
                if try !connection.query(Self.closeHolds, [PostgresArray.integers([id]), "released"]).isEmpty {
                    return ReleaseOutcome(status: "released", returned: amount, held: amount)
                }
                let now = try connection.query(Self.waitForHold, [id]).first?.decode(0, as: String.self) ?? status
                guard now == "held" else { return ReleaseOutcome(status: now, returned: 0, held: amount) }
            }
            return ReleaseOutcome(status: "held", returned: 0, held: amount)
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

    // MARK: SQL

    static let findHold = PreparedStatement(
        "holds_find", "SELECT id, status, amount FROM holds WHERE request_id = $1 AND ($2::bigint IS NULL OR id = $2)")
    /// The hold's status once no other transaction holds its row (the lock ends with the statement).
    static let waitForHold = PreparedStatement("holds_wait", "SELECT status FROM holds WHERE id = $1 FOR UPDATE")
    /// Closing attempts of one release that meets other transactions on its hold.
    static let releaseTries = 3
    static let closeHolds = PreparedStatement(
        "holds_close", "SELECT request_id, amount FROM tally_close_holds($1::bigint[], $2)")
    static let expire = PreparedStatement(
        "holds_expire",
        """
        SELECT count(*) FROM tally_close_holds(ARRAY(
            SELECT id FROM holds WHERE status = 'held' AND expires_at < now() ORDER BY expires_at LIMIT $1), 'expired')
        """)
    /// Reads what it deletes and nothing else, in any plan: the holds due oldest first, in
    /// `holds_closed_idx`'s order (which is what makes the planner walk that index: to it
    /// `closed_at < now() - …` is no constant, so it expects a third of the table to qualify),
    /// then each by its key (`= ANY` of an array; `IN (subquery)` let a generic plan hash the
    /// ids and scan the table for them). Either way a call read every hold kept for the hour.
    static let purge = PreparedStatement(
        "holds_purge",
        """
        WITH gone AS (DELETE FROM holds WHERE id = ANY (ARRAY(
            SELECT id FROM holds WHERE status <> 'held' AND closed_at < now() - make_interval(secs => $1)
            ORDER BY closed_at LIMIT $2))
            RETURNING 1)
        SELECT count(*) FROM gone
        """)
    static let open = PreparedStatement(
        "holds_open_totals",
        "SELECT count(*), coalesce(sum(amount), 0)::bigint FROM holds WHERE status = 'held'")
}
