import Foundation
import Synchronization
import TallyPostgres
import TallyStore

/// A fresh, migrated database on the test cluster, one per test suite.
///
/// The cluster is the one `ops/test` starts (`TALLY_TEST_DATABASE_URL`, a maintenance-database
/// URL). When `swift test` runs on its own, the embedded test cluster is started here with
/// `ops/pg` under `.tally/test`, so tests always hit a real PostgreSQL.
public struct TestDatabase: Sendable {
    public let name: String
    public let url: String
    public let pool: PostgresPool

    /// The database of a suite, created on first use and shared by that suite's tests.
    public static func shared(_ suite: String) async throws -> TestDatabase {
        try await SharedDatabases.instance.database(for: suite)
    }

    /// The same database through a new pool (e.g. after the cluster restarted under the old one).
    public func reopened(poolSize: Int = 4) -> TestDatabase {
        TestDatabase(name: name, url: url, pool: PostgresPool(url: url, size: poolSize))
    }

    /// Creates `tally_t_<suite>_<pid>_<random>` and applies every migration. On the Citus
    /// cluster (``TestCluster/isCitus``) the database is made on every node with the extension
    /// and the workers registered, so the migration distributes the tables.
    public static func create(_ suite: String, poolSize: Int = 8, migrate: Bool = true) async throws -> TestDatabase {
        let name =
            "tally_t_\(suite.lowercased().filter { $0.isLetter || $0.isNumber })_\(getpid())_\(UInt32.random(in: 0...UInt32.max))"
        if TestCluster.isCitus {
            try TestCluster.control("citus", "createdb", name)
        } else {
            let admin = PostgresPool(url: try TestCluster.maintenanceURL(), size: 1)
            try await admin.withConnection { connection in
                try connection.execute("CREATE DATABASE \(connection.quoteIdentifier(name))")
            }
            await admin.close()
        }
        let url = TestCluster.url(database: name)
        let pool = PostgresPool(url: url, size: poolSize)
        if migrate { try await Migrator(pool: pool).migrate() }
        return TestDatabase(name: name, url: url, pool: pool)
    }
}

/// The test cluster: its URLs and control script.
public enum TestCluster {
    /// The repository root, found from this file's path.
    public static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    private static let started = Mutex<String?>(nil)

    /// `TALLY_TEST_CITUS=1`: the maintenance URL is a Citus coordinator started by
    /// `ops/pg citus start` under the same TALLY_HOME (ops/slow-tests/citus).
    public static let isCitus = ProcessInfo.processInfo.environment["TALLY_TEST_CITUS"] == "1"

    /// `TALLY_TEST_DATABASE_URL`, else the URL of the embedded test cluster (started if needed).
    public static func maintenanceURL() throws -> String {
        if let url = ProcessInfo.processInfo.environment["TALLY_TEST_DATABASE_URL"], !url.isEmpty { return url }
        return try started.withLock { cached in
            if let cached { return cached }
            _ = try control("start")
            let url = try control("url", "postgres").trimmingCharacters(in: .whitespacesAndNewlines)
            cached = url
            return url
        }
    }

    /// The URL of another database on the same cluster.
    public static func url(database: String) -> String {
        guard let maintenance = try? maintenanceURL(), let slash = maintenance.lastIndex(of: "/") else { return "" }
        let query = maintenance[slash...].firstIndex(of: "?").map { String(maintenance[$0...]) } ?? ""
        return String(maintenance[..<slash]) + "/" + database + query
    }

    /// Runs `ops/pg <arguments>` against the test cluster (e.g. `restart`, `stop`, `start`).
    @discardableResult
    public static func control(_ arguments: String...) throws -> String {
        let process = Process()
        let script =
            ProcessInfo.processInfo.environment["TALLY_PG_CTL"]
            ?? repositoryRoot.appendingPathComponent("ops/pg").path
        process.executableURL = URL(fileURLWithPath: script)
        process.arguments = arguments
        var environment = ProcessInfo.processInfo.environment
        if environment["TALLY_HOME"] == nil {
            environment["TALLY_HOME"] = repositoryRoot.appendingPathComponent(".tally/test").path
        }
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestClusterError(
                message: "ops/pg \(arguments.joined(separator: " ")) exited \(process.terminationStatus)")
        }
        return String(decoding: data, as: UTF8.self)
    }
}

public struct TestClusterError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

private actor SharedDatabases {
    static let instance = SharedDatabases()
    private var databases: [String: Task<TestDatabase, any Error>] = [:]

    func database(for suite: String) async throws -> TestDatabase {
        if let existing = databases[suite] { return try await existing.value }
        let task = Task { try await TestDatabase.create(suite) }
        databases[suite] = task
        return try await task.value
    }
}

/// Tests that stop or restart the shared cluster run only in their own `swift test` pass
/// (`ops/test` sets `TALLY_DISRUPTIVE_TESTS=1` and filters to them), never beside other suites.
public let disruptiveTestsEnabled = ProcessInfo.processInfo.environment["TALLY_DISRUPTIVE_TESTS"] == "1"

/// The kill -9 tests take minutes: they run only from `ops/slow-tests/crash-recovery`
/// (`ops/test --slow`), which sets `TALLY_CRASH_TESTS=1`.
public let crashTestsEnabled = ProcessInfo.processInfo.environment["TALLY_CRASH_TESTS"] == "1"

/// The `tally` executable built next to the test bundle, for tests that run the real CLI.
public enum TallyBinary {
    public static var url: URL {
        URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("tally")
    }

    /// `tally admin create-user --username <username> <options> --json`; the new user's id.
    public static func createUser(_ username: String, _ options: [String] = [], databaseURL: String) throws -> Int64 {
        let created = try run(
            ["admin", "create-user", "--username", username, "--json"] + options, databaseURL: databaseURL)
        guard
            let id = (try JSONSerialization.jsonObject(with: Data(created.output.utf8)) as? [String: Any])?["id"]
                as? NSNumber
        else { throw TallyRunError(arguments: ["admin", "create-user", username], run: created) }
        return id.int64Value
    }

    /// The exit a caller expects; any other throws `TallyRunError` with the command's stderr.
    public enum Exit: Sendable {
        case success
        /// A refusal (bad arguments, an audit that finds something): exit 0 is the failure.
        case failure
        /// Either, for callers that record the status themselves.
        case any
    }

    /// Runs `tally <arguments>` with `DATABASE_URL` (and `environment`) set and returns its exit
    /// status and output. An exit other than `expecting` throws, so a command that fails fails
    /// the test, with its stderr in the message.
    @discardableResult
    public static func run(
        _ arguments: [String], databaseURL: String, environment: [String: String] = [:], input: Data? = nil,
        expecting: Exit = .success
    ) throws -> TallyRun {
        let run = try launch(arguments, databaseURL: databaseURL, environment: environment, input: input)
        switch expecting {
        case .success where run.status != 0, .failure where run.status == 0:
            throw TallyRunError(arguments: arguments, run: run)
        default:
            return run
        }
    }

    private static func launch(
        _ arguments: [String], databaseURL: String, environment: [String: String], input: Data?
    ) throws -> TallyRun {
        let outcome = try ChildProcess.run(
            url, arguments, environment: environment.merging(["DATABASE_URL": databaseURL]) { _, url in url },
            input: input, captureErrors: true)
        return TallyRun(status: outcome.status, output: outcome.output, errorOutput: outcome.errors)
    }
}

/// What one `tally` command did.
public struct TallyRun: Sendable {
    public let status: Int32
    /// Standard output.
    public let output: String
    /// Standard error.
    public let errorOutput: String
}

/// A `tally` command exited otherwise than its caller expected.
public struct TallyRunError: Error, CustomStringConvertible {
    public let arguments: [String]
    public let run: TallyRun

    public var description: String {
        "tally \(arguments.joined(separator: " ")) exited \(run.status); stderr: \(run.errorOutput.suffix(2_000)); "
            + "stdout: \(run.output.suffix(1_000))"
    }
}
