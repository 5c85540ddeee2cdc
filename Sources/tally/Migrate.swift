import ArgumentParser
import Foundation
import TallyStore

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply the numbered SQL migrations (idempotent) and create the next months' log partitions.")

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Months of request_logs partitions to create ahead, from the current month.")
    var monthsAhead = 3

    @Flag(
        help: """
            Create the citus extension first (the server must preload it and the workers be registered, as \
            ops/pg citus does). In a database that has the extension, every migrate distributes the tables.
            """)
    var citus = false

    func validate() throws {
        guard (0...120).contains(monthsAhead) else { throw ValidationError("--months-ahead must be within 0…120") }
    }

    func run() async throws {
        let pool = try database.pool(size: 1)
        if citus {
            try await pool.withConnection { try $0.execute("CREATE EXTENSION IF NOT EXISTS citus") }
        }
        let migrator = Migrator(pool: pool)
        let applied = try await migrator.migrate()
        let partitions = try await migrator.createLogPartitions(months: monthsAhead + 1)
        print(applied.isEmpty ? "schema is up to date" : "applied: " + applied.map(\.name).joined(separator: ", "))
        print("created \(partitions) request_logs partition(s)")
        await pool.close()
    }
}

struct Partitions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create monthly request_logs partitions ahead of time.")

    @OptionGroup var database: DatabaseOptions

    @Option(help: "First month, YYYY-MM (UTC). Default: the current month.")
    var from: String?

    @Option(help: "How many months to create (1…120).")
    var months = 3

    func validate() throws {
        // Every partition slows each plan over request_logs a little; 10 years is plenty.
        guard (1...120).contains(months) else { throw ValidationError("--months must be within 1…120") }
    }

    func run() async throws {
        let start = try from.map { try monthOption($0, name: "--from").start } ?? Date()
        let pool = try await database.migratedPool(size: 1)
        let created = try await Migrator(pool: pool).createLogPartitions(from: start, months: months)
        print("created \(created) request_logs partition(s)")
        await pool.close()
        await pool.close()
    }
}
