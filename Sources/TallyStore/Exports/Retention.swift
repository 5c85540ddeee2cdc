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
}

/// Which partitions a retention run keeps and which it drops.
public struct RetentionPlan: Sendable, Equatable {
    /// The oldest month kept; every partition before it is dropped.
    public var firstKept: UsageMonth
    public var kept: [LogPartition]
    public var dropped: [LogPartition]
}

/// Request-row retention (DESIGN §9): whole monthly partitions of `request_logs` are detached
/// (`DETACH PARTITION … CONCURRENTLY`, so ingest keeps running; on Citus without it) and dropped; never a bulk
/// DELETE. The usage rollups, the ledger and therefore statements and rollup exports stay.
public struct LogRetention: Sendable {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    /// Keeps the `keepMonths` months ending with `current` (at least the current month).
    public func plan(keepMonths: Int, current: UsageMonth = UsageMonth(containing: Date())) async throws
        -> RetentionPlan
    {
        guard keepMonths >= 1 else {
            throw StoreError.invalid("keep-months must be at least 1 (the current month is always kept)")
        }
        let firstKept = current.adding(months: -(keepMonths - 1))
        let partitions = try await pool.withConnection { connection in
            try connection.query(
                """
                SELECT name, to_char(month, 'YYYY-MM'), pg_total_relation_size(name::regclass)
                FROM tally_log_partitions ORDER BY month
                """
            ).map { row in
                guard let month = UsageMonth(try row.decode(1, as: String.self)) else {
                    throw StoreError.internalError("partition \(try row.decode(0, as: String.self)) has no month")
                }
                return LogPartition(name: try row.decode(0), month: month, bytes: try row.decode(2))
            }
        }
        return RetentionPlan(
            firstKept: firstKept, kept: partitions.filter { $0.month >= firstKept },
            dropped: partitions.filter { $0.month < firstKept })
    }

    /// Drops the plan's partitions, oldest first. Unless `verify` is false, a month is dropped
    /// only when `tally audit --month` finds it clean, so its request rows are not needed to
    /// explain its rollups and charges. Each drop is audited. Returns the partitions dropped.
    @discardableResult
    public func apply(_ plan: RetentionPlan, verify: Bool = true, by actor: Actor) async throws -> [LogPartition] {
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

    private func drop(_ partition: LogPartition, by actor: Actor) async throws {
        try await pool.withConnection { connection in
            let table = connection.quoteIdentifier(partition.name)
            let pending = try connection.query(
                "SELECT detach_pending FROM tally_log_partitions WHERE name = $1", [partition.name])
            if let row = pending.first {
                // CONCURRENTLY runs outside a transaction; an interrupted one is finished with FINALIZE.
                // Citus refuses CONCURRENTLY: there the detach locks request_logs for its instant,
                // waiting for that lock only briefly at a time so ingest never queues behind it.
                let finalize = try row.decode(0, as: Bool.self)
                if finalize {
                    try connection.execute("ALTER TABLE request_logs DETACH PARTITION \(table) FINALIZE")
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
