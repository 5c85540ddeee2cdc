import Foundation
import Logging
import TallyPostgres

/// One numbered SQL file of `sql/migrations/` (`0003_request_logs.sql` → version 3).
public struct Migration: Sendable, Equatable {
    public let version: Int
    public let name: String
    public let sql: String

    public init(version: Int, name: String, sql: String) {
        self.version = version
        self.name = name
        self.sql = sql
    }

    /// The migrations shipped inside the binary, in version order.
    public static func bundled() throws -> [Migration] {
        guard let directory = Bundle.module.url(forResource: "Migrations", withExtension: nil) else {
            throw StoreError.internalError("the migrations are missing from the TallyStore bundle")
        }
        let files = try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)
        return try files.filter { $0.pathExtension == "sql" }.map { file in
            let name = file.deletingPathExtension().lastPathComponent
            guard let version = Int(name.prefix(while: \.isNumber)) else {
                throw StoreError.internalError(
                    "migration file \(file.lastPathComponent) does not start with its number")
            }
            return Migration(version: version, name: name, sql: try String(contentsOf: file, encoding: .utf8))
        }.sorted { $0.version < $1.version }
    }
}

/// Applies migrations in order, each in its own transaction (one statement at a time: see
/// ``SQLScript``), recording them in
/// `schema_migrations`, then, in a database with the citus extension, distributes the tables
/// (``CitusLayout``). Safe to run concurrently from several instances: an advisory lock
/// serialises them, and applied versions are skipped.
public struct Migrator: Sendable {
    /// An arbitrary constant shared by every Tally instance: the advisory lock key for migrations.
    private static let lockKey: Int64 = 0x7A11_0001
    private let pool: PostgresPool
    private let logger: Logger
    private let lockTimeout: String
    private let briefTries: Int

    /// `lockTimeout` and `briefTries`: how long each try of a migration waits for a table
    /// lock before it gives way, and how many tries do (``apply(_:on:)``).
    public init(
        pool: PostgresPool, logger: Logger = Logger(label: "tally.migrate"), lockTimeout: String = "2s",
        briefTries: Int = 30
    ) {
        self.pool = pool
        self.logger = logger
        self.lockTimeout = lockTimeout
        self.briefTries = briefTries
    }

    /// Applies what is missing; returns the migrations applied by this call.
    @discardableResult
    public func migrate(_ migrations: [Migration]? = nil) async throws -> [Migration] {
        let migrations = try migrations ?? Migration.bundled()
        let migrator = self
        return try await pool.withConnection { connection in
            try connection.query("SELECT pg_advisory_lock($1)", [Self.lockKey])
            defer { _ = try? connection.query("SELECT pg_advisory_unlock($1)", [Self.lockKey]) }
            try connection.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """)
            let applied = Set(
                try connection.query("SELECT version FROM schema_migrations").map { try $0.decode(0, as: Int.self) })
            var done: [Migration] = []
            for migration in migrations where !applied.contains(migration.version) {
                try migrator.apply(migration, on: connection)
                migrator.logger.info("applied migration", metadata: ["migration": "\(migration.name)"])
                done.append(migration)
            }
            if try CitusLayout.isInstalled(on: connection) {
                for table in try CitusLayout.distribute(on: connection) {
                    logger.info("distributed on Citus", metadata: ["table": "\(table)"])
                }
            }
            return done
        }
    }

    /// Applies one migration in its own transaction. A migration that changes a table takes a
    /// lock that waits for every transaction already reading it, and while it waits every new
    /// query of that table queues behind it: with the older instances still serving (a rolling
    /// deploy) and a long reader open (an export streaming for minutes), ingest and authorize
    /// would stall for that long. So each try waits at most `lockTimeout`, gives way and lets
    /// the queue drain; after `briefTries` it waits its turn however long, as PostgreSQL would.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    private func apply(_ migration: Migration, on connection: PostgresConnection) throws {
        var failed = 0
        while true {
            let brief = failed < briefTries
            do {
                try connection.transaction { connection in
                    if brief { try connection.execute("SET LOCAL lock_timeout = '\(lockTimeout)'") }
                    for statement in SQLScript.statements(migration.sql) { try connection.execute(statement) }
                    try connection.query(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        [migration.version, migration.name])
                }
                return
            } catch let error as PostgresError where brief && error.sqlState == SQLState.lockNotAvailable {
                failed += 1
                logger.warning(
                    "migration waits for a table that open transactions hold; it gives way and tries again",
                    metadata: [
                        "migration": "\(migration.name)", "try": "\(failed)",
                        "then": "\(failed < briefTries ? "another brief try" : "it waits its turn")",
                    ])
                usleep(UInt32(min(100_000 * failed, 2_000_000)))
            }
        }
    }

    /// The bundled migrations this database has not applied, read without changing anything
    /// (a read-only role may ask): every one of them when it has no `schema_migrations` table.
    public func missing(_ migrations: [Migration]? = nil) async throws -> [Migration] {
        let migrations = try migrations ?? Migration.bundled()
        let applied = try await pool.withConnection { connection -> Set<Int> in
            guard
                try connection.query("SELECT to_regclass('schema_migrations') IS NOT NULL")[0].decode(0, as: Bool.self)
            else { return [] }
            return Set(
                try connection.query("SELECT version FROM schema_migrations").map { try $0.decode(0, as: Int.self) })
        }
        return migrations.filter { !applied.contains($0.version) }
    }

    /// Creates monthly `request_logs` partitions for `months` months from the month of `start`
    /// (``LogPartitions``: without making batches queue behind the lock for long).
    @discardableResult
    public func createLogPartitions(from start: Date = Date(), months: Int) async throws -> Int {
        try await LogPartitions.create(from: start, months: months, pool: pool)
    }
}
