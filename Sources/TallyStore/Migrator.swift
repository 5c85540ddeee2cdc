import Foundation
import Logging
import TallyPostgres

/// One numbered SQL file of `sql/migrations/` (`0003_request_logs.sql` → version 3).
public struct Migration: Sendable, Equatable {
    public let version: Int
    public let name: String
    public let sql: String

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

    public init(pool: PostgresPool, logger: Logger = Logger(label: "tally.migrate")) {
        self.pool = pool
        self.logger = logger
    }

    /// Applies what is missing; returns the migrations applied by this call.
    @discardableResult
    public func migrate(_ migrations: [Migration]? = nil) async throws -> [Migration] {
        let migrations = try migrations ?? Migration.bundled()
        let logger = logger
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
                try connection.transaction { connection in
                    for statement in SQLScript.statements(migration.sql) { try connection.execute(statement) }
                    try connection.query(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        [migration.version, migration.name])
                }
                logger.info("applied migration", metadata: ["migration": "\(migration.name)"])
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
