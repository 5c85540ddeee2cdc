import Foundation
import TallyPostgres

/// Creates monthly `request_logs` partitions without stalling ingest. Creating one locks the
/// parent table; while that lock request waits for the batch transactions already open (a
/// streamed batch stays open for the length of its upload), every new batch and log read
/// queues behind it. So each try waits at most `lockTimeout` for the lock, lets the queue
/// drain, and tries again (`tries` in all, pausing 100 ms more after each).
enum LogPartitions {
    static let lockTimeout = "1s"
    static let tries = 10

    /// Partitions for `months` months from the month of `start`; returns how many were created.
    static func create(from start: Date, months: Int, pool: PostgresPool) async throws -> Int {
        var failed = 0
        while true {
            do {
                return try await pool.withConnection { connection in
                    try withLockTimeout(on: connection) { try createOnce(from: start, months: months, on: $0) }
                }
            } catch let error as PostgresError where error.sqlState == SQLState.lockNotAvailable && failed + 1 < tries {
                failed += 1
                try await Task.sleep(for: .milliseconds(100 * failed))
            }
        }
    }

    /// The same on a connection the caller holds (`tally import`, outside its batch
    /// transactions); the thread sleeps between tries.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    static func create(from start: some PostgresEncodable, months: Int, on connection: PostgresConnection) throws
        -> Int
    {
        try lockingBriefly(on: connection) { try createOnce(from: start, months: months, on: $0) }
    }

    /// Runs `ddl` (a statement that locks `request_logs`, such as retention's detach on Citus)
    /// the same way: each try waits at most `lockTimeout` for the lock, then lets the queue drain.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    static func lockingBriefly<T>(on connection: PostgresConnection, _ ddl: (PostgresConnection) throws -> T) throws
        -> T
    {
        var failed = 0
        while true {
            do {
                return try withLockTimeout(on: connection, ddl)
            } catch let error as PostgresError where error.sqlState == SQLState.lockNotAvailable && failed + 1 < tries {
                failed += 1
                usleep(UInt32(100_000 * failed))
            }
        }
    }

    /// `body` with `lockTimeout` set for the session, not a transaction: the statement stays on
    /// its own, as Citus wants DDL on a distributed table.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    private static func withLockTimeout<T>(on connection: PostgresConnection, _ body: (PostgresConnection) throws -> T)
        throws -> T
    {
        try connection.execute("SET lock_timeout = '\(lockTimeout)'")
        defer { try? connection.execute("RESET lock_timeout") }
        return try body(connection)
    }

    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    private static func createOnce(from start: some PostgresEncodable, months: Int, on connection: PostgresConnection)
        throws -> Int
    {
        try connection.query("SELECT tally_create_log_partitions($1, $2)", [start, months])[0].decode(0, as: Int.self)
    }
}
