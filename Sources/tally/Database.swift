import ArgumentParser
import Foundation
import Logging
import TallyPostgres
import TallyStore

/// The `--database-url` option shared by every command that talks to PostgreSQL.
struct DatabaseOptions: ParsableArguments {
    @Option(
        name: .customLong("database-url"),
        help:
            "PostgreSQL URL or conninfo. Env: DATABASE_URL. Default: the embedded cluster under .tally/ (started by ops/pg)."
    )
    var databaseURL: String?

    /// The URL to use: the flag, else DATABASE_URL, else the embedded cluster (started on demand).
    func resolvedURL() throws -> String {
        if let databaseURL, !databaseURL.isEmpty { return databaseURL }
        if let url = ProcessInfo.processInfo.environment["DATABASE_URL"], !url.isEmpty { return url }
        return try EmbeddedPostgres.start()
    }

    func pool(size: Int = 4, logger: Logger = Logger(label: "tally")) throws -> PostgresPool {
        PostgresPool(url: try resolvedURL(), size: size, logger: logger)
    }

    /// A migrated database, ready for the work of a command that writes (it needs a role that
    /// may change the schema anyway).
    func migratedPool(size: Int = 4) async throws -> PostgresPool {
        let pool = try pool(size: size)
        try await Migrator(pool: pool).migrate()
        return pool
    }

    /// A database whose schema already has every migration of this binary, for a command that
    /// only reads: it never migrates (a newer binary run for a report would change production's
    /// schema under its servers, and a read-only role cannot), and refuses a schema behind it.
    func currentPool(size: Int = 4) async throws -> PostgresPool {
        let pool = try pool(size: size)
        let missing: [Migration]
        do { missing = try await Migrator(pool: pool).missing() } catch {
            await pool.close()
            throw error
        }
        guard missing.isEmpty else {
            await pool.close()
            throw SchemaBehind(missing: missing.map(\.name))
        }
        return pool
    }
}

/// A read-only command's refusal of a database that lacks some of its migrations.
struct SchemaBehind: Error, CustomStringConvertible {
    let missing: [String]

    var description: String {
        let names =
            missing.count > 3 ? missing.prefix(3).joined(separator: ", ") + ", …" : missing.joined(separator: ", ")
        return "the database's schema lacks \(missing.count) migration(s) of this tally (\(names)); "
            + "run tally migrate (or tally serve) first, or use the tally that matches the database"
    }
}

/// The embedded PostgreSQL of a checkout: `ops/pg start` prints its URL.
enum EmbeddedPostgres {
    static func start() throws -> String {
        guard let script = locateScript() else {
            throw ValidationError(
                "DATABASE_URL is not set and ops/pg was not found (run from a Tally checkout, or set DATABASE_URL)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: script)
        process.arguments = ["start"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let url = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard process.terminationStatus == 0, !url.isEmpty else {
            throw ValidationError("ops/pg start failed (exit \(process.terminationStatus)); see its messages above")
        }
        // Said every time: a command meant for production, run where DATABASE_URL was not
        // exported (it lives in /etc/tally/tally.env), would otherwise act on this cluster unseen.
        FileHandle.standardError.write(
            Data("tally: DATABASE_URL is not set; using the embedded PostgreSQL of \(script)\n".utf8))
        return url
    }

    /// `ops/pg` in the working directory or above the executable (`.build/release/tally`).
    private static func locateScript() -> String? {
        var candidates = [FileManager.default.currentDirectoryPath]
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent()
        for _ in 0..<5 {
            candidates.append(directory.path)
            directory.deleteLastPathComponent()
        }
        return candidates.map { $0 + "/ops/pg" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}
