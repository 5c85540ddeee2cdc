import Foundation
import Synchronization
import TallyCore
import TallyPostgres

/// A monthly partition of `request_logs`.
public struct LogPartition: Sendable, Equatable {
    public var name: String
    public var month: UsageMonth
    /// Table and index size on disk.
    public var bytes: Int64
    /// False for a month's table that a run stopped between its detach and its drop (killed, or
    /// the connection lost): no longer part of `request_logs`, so ingest could not store the
    /// month's lines (its partition's name is taken) and exports no longer saw its rows. False
    /// too for a partition whose detach a run left pending (interrupted between its two steps):
    /// PostgreSQL's planner already leaves it out of `request_logs`.
    public var attached = true
}

/// Which partitions a retention run keeps and which it drops.
public struct RetentionPlan: Sendable, Equatable {
    /// The oldest month kept; every partition before it is dropped.
    public var firstKept: UsageMonth
    public var kept: [LogPartition]
    public var dropped: [LogPartition]
    /// Kept months' tables left detached, or their detach pending, by an interrupted run (with
    /// `--keep-months` raised since): attached again, not dropped.
    public var reattached: [LogPartition] { kept.filter { !$0.attached } }
}

/// Request-row retention (DESIGN §9): whole monthly partitions of `request_logs` are detached
/// (`DETACH PARTITION … CONCURRENTLY`, so ingest keeps running; on Citus without it) and dropped; never a bulk
/// DELETE. The usage rollups, the ledger and therefore statements and rollup exports stay.
public struct LogRetention: Sendable {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    /// The fewest months a run keeps: the current one and the one before it, whose late lines the
    /// gateway may still resend (a line of a dropped month is never billed) and whose request rows
    /// finance exports in the first days of the month.
    public static let minimumKeepMonths = 2
    public static let tooFewMonths =
        "keep-months must be at least \(minimumKeepMonths): the current month and the one before it, whose late "
        + "lines the gateway may still resend (a line of a dropped month is never billed)"

    /// Keeps the `keepMonths` months ending with `current` (at least ``minimumKeepMonths``).
    public func plan(keepMonths: Int, current: UsageMonth = UsageMonth(containing: Date())) async throws
        -> RetentionPlan
    {
        guard keepMonths >= Self.minimumKeepMonths else { throw StoreError.invalid(Self.tooFewMonths) }
        let firstKept = current.adding(months: -(keepMonths - 1))
        let partitions = try await pool.withConnection { connection in
            try connection.query(Self.partitions).map { row in
                guard let month = UsageMonth(try row.decode(1, as: String.self)) else {
                    throw StoreError.internalError("partition \(try row.decode(0, as: String.self)) has no month")
                }
                return LogPartition(
                    name: try row.decode(0), month: month, bytes: try row.decode(2), attached: try row.decode(3))
            }
        }
        return RetentionPlan(
            firstKept: firstKept, kept: partitions.filter { $0.month >= firstKept },
            dropped: partitions.filter { $0.month < firstKept })
    }

    /// The months' partitions, and the months' tables detached from `request_logs` (only a
    /// retention run detaches them, so such a table is one it did not finish).
    static let partitions = """
        SELECT name, to_char(month, 'YYYY-MM'), pg_total_relation_size(name::regclass), NOT detach_pending
        FROM tally_log_partitions
        UNION ALL
        SELECT c.relname::text,
               to_char(to_date(substring(c.relname from 15 for 4) || substring(c.relname from 20 for 2), 'YYYYMM'), 'YYYY-MM'),
               pg_total_relation_size(c.oid), false
        FROM pg_class c
        WHERE c.relname ~ '^request_logs_y[0-9]{4}m[0-9]{2}$' AND c.relkind = 'r' AND NOT c.relispartition
          AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'request_logs'::regclass)
        ORDER BY 2
        """

    /// Attaches the plan's detached kept months again, then drops its old partitions, oldest
    /// first. Unless `verify` is false, a month is dropped only when `tally audit --month` finds
    /// it clean, so its request rows are not needed to explain its rollups and charges. Each
    /// drop is audited. Returns the partitions dropped.
    @discardableResult
    public func apply(_ plan: RetentionPlan, verify: Bool = true, by actor: Actor) async throws -> [LogPartition] {
        for partition in plan.reattached { try await attach(partition, by: actor) }
        var dropped: [LogPartition] = []
        for partition in plan.dropped {
            if verify {
                let problems = try await Auditor(pool: pool).run(month: partition.month)
                guard problems.isEmpty else {
                    throw StoreError.conflict(
                        """
                        \(partition.month) does not audit clean (\(problems.count) problem(s), first: \(problems[0])); \
                        its request rows are kept. Dropped so far: \(dropped.count).
                        """)
                }
            }
            try await drop(partition, by: actor)
            dropped.append(partition)
        }
        return dropped
    }

    /// A month whose detach is pending is detached for good first (a partition cannot be
    /// attached while it is still one), then attached like a table a run left detached.
    private func attach(_ partition: LogPartition, by actor: Actor) async throws {
        try await pool.withConnection { connection in
            if try Self.detachPending(of: partition, on: connection) == true {
                try Self.finishDetach(of: partition, on: connection)
            }
        }
        try await pool.transaction { connection in
            try connection.execute(
                """
                ALTER TABLE request_logs ATTACH PARTITION \(connection.quoteIdentifier(partition.name))
                FOR VALUES FROM ('\(partition.month.firstDay) 00:00:00+00') TO ('\(partition.month.adding(months: 1).firstDay) 00:00:00+00')
                """)
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "retention.reattach", target: "request_logs:\(partition.month)",
                before: nil, after: ["partition": partition.name, "bytes": partition.bytes])
        }
    }

    private func drop(_ partition: LogPartition, by actor: Actor) async throws {
        try await pool.withConnection { connection in
            let table = connection.quoteIdentifier(partition.name)
            if let pending = try Self.detachPending(of: partition, on: connection) {
                // CONCURRENTLY runs outside a transaction; an interrupted one is finished with FINALIZE.
                // Citus refuses CONCURRENTLY: there the detach locks request_logs for its instant,
                // waiting for that lock only briefly at a time so ingest never queues behind it.
                if pending {
                    try Self.finishDetach(of: partition, on: connection)
                } else if try CitusLayout.isInstalled(on: connection) {
                    try LogPartitions.lockingBriefly(on: connection) {
                        try $0.execute("ALTER TABLE request_logs DETACH PARTITION \(table)")
                    }
                } else {
                    try connection.execute("ALTER TABLE request_logs DETACH PARTITION \(table) CONCURRENTLY")
                }
            }
            try connection.transaction { connection in
                try connection.execute("DROP TABLE IF EXISTS \(table)")
                // The audit row below is what keeps the month dropped (migration 0027).
                try ChangeNotice.send([.logsDropped], on: connection)
                try AuditLog.recordChange(
                    on: connection, actor: actor, action: "retention.drop", target: "request_logs:\(partition.month)",
                    before: ["partition": partition.name, "bytes": partition.bytes], after: nil)
            }
        }
    }
}

extension LogRetention {
    /// Whether `partition` is a partition of `request_logs` whose detach an interrupted run left
    /// pending; nil when it is no partition (any longer).
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    static func detachPending(of partition: LogPartition, on connection: PostgresConnection) throws -> Bool? {
        try connection.query("SELECT detach_pending FROM tally_log_partitions WHERE name = $1", [partition.name])
            .first?.decode(0, as: Bool.self)
    }

    /// Finishes a pending detach (FINALIZE, outside a transaction like the CONCURRENTLY it completes).
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    static func finishDetach(of partition: LogPartition, on connection: PostgresConnection) throws {
        try connection.execute(
            "ALTER TABLE request_logs DETACH PARTITION \(connection.quoteIdentifier(partition.name)) FINALIZE")
    }
}

/// The months whose request rows retention dropped (its `retention.drop` audit rows). A line of
/// such a month cannot be told from one stored before it (its row is gone, and with it the
/// unique key a resend meets), so ingest rejects it rather than charge it twice; the month's
/// partition is not made again either (migration 0027).
public final class DroppedLogMonths: Sendable {
    private let pool: PostgresPool
    private let months = Mutex<Set<UsageMonth>>([])

    public init(pool: PostgresPool) { self.pool = pool }

    public func contains(_ month: UsageMonth) -> Bool { months.withLock { $0.contains(month) } }

    /// Reads the dropped months again: at start, on `logs-dropped`, and on the price refresh's timer.
    public func refresh() async throws {
        let read = try await pool.withConnection { try Self.read(on: $0) }
        months.withLock { $0 = read }
    }

    /// The dropped months as retention's audit rows name them (`request_logs:YYYY-MM`); also
    /// what `tally import` leaves out.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    static func read(on connection: PostgresConnection) throws -> Set<UsageMonth> {
        Set(
            try connection.query(
                """
                SELECT DISTINCT substr(target, length('request_logs:') + 1) FROM audit_log
                WHERE action = 'retention.drop' AND target LIKE 'request_logs:%'
                """
            ).map { UsageMonth(try $0.decode(0, as: String.self)) }.compactMap { $0 })
    }
}
