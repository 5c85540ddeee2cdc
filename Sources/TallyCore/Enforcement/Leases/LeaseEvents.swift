/// Everything that can happen to a ``LeaseMachine``. Each is handled at a time given with it
/// (seconds on any monotonic clock), so the machine never reads a clock itself.
public enum LeaseEvent: Sendable, Equatable {
    /// The instance is registered as `instance` until `validUntil` (a start, a renewal, or a new
    /// registration after the old one was reaped: then every lease went with the old one).
    case registered(instance: String, validUntil: Double)
    /// A renewal asked for by ``LeaseAction/renewRegistration`` failed.
    case renewalFailed

    /// Authorize asks for a hold; answered by ``LeaseAction/answer(_:_:)`` with this ticket.
    case cut(LeaseTicket, HoldRequest)
    /// Returns once every hold cut before it is journaled (``LeaseAction/flushed(_:)``).
    case flush(LeaseTicket)

    /// A ``LeaseAction/refill(round:instance:wants:)`` committed, or failed (nothing granted).
    case refillGranted(round: Int, [LeaseGrant])
    case refillFailed(round: Int)
    /// Units leased to `instance` outside a refill round (with a key lookup), for `wants`.
    case leaseGranted(instance: String, wants: [AccountUnits], [LeaseGrant])
    /// Units leased to `instance` with a key lookup that a change of balances overtook (a
    /// lowering's notice, a return of every lease): they go back unused.
    case staleLeaseGranted(instance: String, [LeaseGrant])
    /// A ``LeaseAction/fetchHoldIDs`` answered `count` fresh ids from `first`, or failed.
    case holdIDsGranted(first: Int64, count: Int64)
    case holdIDsFailed
    /// A ``LeaseAction/journal(batch:instance:holds:)`` committed (outcomes in the order of its
    /// holds), or failed: then it is written again after a pause (idempotent by hold id).
    case journalCommitted(batch: Int, [JournalOutcome])
    case journalFailed(batch: Int)
    /// The batch failed and PostgreSQL answered why (an error, not a lost connection): nothing of
    /// it was stored. Its sync holds are dropped and their units are free again; holds answered
    /// before (async, or a sync hold whose earlier write was lost) are written again after a pause.
    case journalRolledBack(batch: Int)
    /// The journal refused the batch: its registration was reaped (and its leases returned).
    case journalRefused(batch: Int)

    /// Another instance ran short of the account and asks for leases back (`lease-wanted:`).
    case leaseWanted(LeaseAccount)
    /// A settlement overdrew the account (`overdrawn:`): its lease goes back at once.
    case overdrawn(LeaseAccount)
    /// The account's row changed (a token's limits): its lease goes back and is taken afresh.
    case accountChanged(LeaseAccount)
    /// Periodic upkeep: leases unused for ``LeasePolicy/idleLeaseSeconds`` go back.
    case idleTick
    /// Every lease goes back (notifications may have been missed).
    case returnAll
    /// Time passed: waits that were due end (``LeaseAction/wake(at:)``).
    case clock
    /// Shutting down: no more holds are cut; every lease is given up.
    case retire
}

/// What a ``LeaseMachine`` asks its shell to do. Every I/O action is answered by an event.
public enum LeaseAction: Sendable, Equatable {
    /// Tell the caller of a `cut`.
    case answer(LeaseTicket, HoldAnswer)
    /// Tell the caller of a `flush`.
    case flushed(LeaseTicket)
    /// Lease up to `wants` more of each account to `instance` (`tally_lease`), then send
    /// `refillGranted` or `refillFailed` with this round.
    case refill(round: Int, instance: String, wants: [AccountUnits])
    /// Store these holds cut from `instance`'s leases (`tally_journal_holds`), then send
    /// `journalCommitted`, `journalFailed`, `journalRolledBack` or (the registration is gone)
    /// `journalRefused` with this batch.
    case journal(batch: Int, instance: String, holds: [JournaledHold])
    /// Return these unused lease units (`tally_return_leases`); nothing is sent back.
    case giveBack(instance: String, amounts: [AccountUnits])
    /// Take a block of fresh hold ids, then send `holdIDsGranted` or `holdIDsFailed`.
    case fetchHoldIDs
    /// Renew (or replace) the registration, then send `registered` or `renewalFailed`.
    case renewRegistration
    /// Send `clock` at (or after) this time.
    case wake(at: Double)
}
