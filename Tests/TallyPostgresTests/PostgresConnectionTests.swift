import Foundation
import TallyTestSupport
import Testing

@testable import TallyPostgres

@Suite("libpq wrapper")
struct PostgresConnectionTests {
    @Test("text parameters, NULLs, unicode and timestamps round-trip")
    func parametersRoundTrip() async throws {
        let db = try await TestDatabase.shared("postgres")
        let moment = Date(timeIntervalSince1970: 1_793_534_400.123456)
        let row = try await db.pool.withConnection { connection in
            let rows = try connection.query(
                "SELECT $1::text, $2::bigint, $3::boolean, $4::text IS NULL, $5::timestamptz, $6::text",
                ["héllo – 世界 🚀", Int64.min, true, SQLNull(), moment, "tab\tand\nnewline"])
            return [
                rows[0].text(0), rows[0].text(1), rows[0].text(2), rows[0].text(3), rows[0].text(4), rows[0].text(5),
            ]
        }
        #expect(row[0] == "héllo – 世界 🚀")
        #expect(row[1] == String(Int64.min))
        #expect(row[2] == "t")
        #expect(row[3] == "t")
        #expect(row[4] == "2026-11-01 12:00:00.123456+00")
        #expect(row[5] == "tab\tand\nnewline")
    }

    @Test("typed decoding and NULL handling")
    func typedDecoding() async throws {
        let db = try await TestDatabase.shared("postgres")
        try await db.pool.withConnection { connection in
            let rows = try connection.query("SELECT 42::bigint, NULL::text, 'x', 'true'::boolean")
            #expect(try rows[0].decode(0, as: Int64.self) == 42)
            #expect(try rows[0].decodeOptional(1, as: String.self) == nil)
            #expect(throws: PostgresError.self) { try rows[0].decode(1, as: String.self) }
            #expect(throws: PostgresError.self) { try rows[0].decode(2, as: Int64.self) }
            #expect(try rows[0].decode(3, as: Bool.self) == true)
        }
    }

    @Test("prepared statements are prepared once and reused")
    func preparedStatements() async throws {
        let db = try await TestDatabase.shared("postgres")
        let statement = PreparedStatement("test_add", "SELECT $1::bigint + $2::bigint")
        let sums = try await db.pool.withConnection { connection in
            try (0..<5).map { i in try connection.query(statement, [Int64(i), Int64(10)])[0].decode(0, as: Int64.self) }
        }
        #expect(sums == [10, 11, 12, 13, 14])
    }

    @Test("a unique violation carries SQLSTATE 23505 and the connection stays usable")
    func uniqueViolation() async throws {
        let db = try await TestDatabase.shared("postgres")
        try await db.pool.withConnection { connection in
            try connection.execute("CREATE TABLE IF NOT EXISTS uv (id int PRIMARY KEY)")
            try connection.query("INSERT INTO uv VALUES (1) ON CONFLICT DO NOTHING")
            do {
                try connection.query("INSERT INTO uv VALUES ($1)", [1])
                Issue.record("expected a unique violation")
            } catch let error as PostgresError {
                #expect(error.sqlState == "23505")
                #expect(error.isUniqueViolation)
                #expect(error.kind == .query)
                #expect(!error.isConnectionFailure)
            }
            #expect(try connection.query("SELECT 1").count == 1)
        }
    }

    /// Found by a review: a CHECK the Swift rules let through printed a webhook's secret.
    @Test("a violated constraint's description names it, never the row's values (the server's detail)")
    func constraintHidesRow() async throws {
        let db = try await TestDatabase.shared("postgres")
        try await db.pool.withConnection { connection in
            try connection.execute("CREATE TABLE IF NOT EXISTS checked (secret text CHECK (length(secret) < 3))")
            do {
                try connection.query("INSERT INTO checked VALUES ($1)", ["sup3r-s3cret"])
                Issue.record("expected a check violation")
            } catch let error as PostgresError {
                #expect(error.sqlState == "23514")
                #expect(error.detail?.contains("sup3r-s3cret") == true, "the server did send the row")
                #expect(error.description.contains("checked_secret_check"))
                #expect(!error.description.contains("sup3r-s3cret"))
            }
        }
    }

    @Test("a failed transaction rolls back everything it wrote")
    func transactionRollsBack() async throws {
        let db = try await TestDatabase.shared("postgres")
        struct Boom: Error {}
        try await db.pool.withConnection { connection in
            try connection.execute("CREATE TABLE IF NOT EXISTS tx (n int)")
        }
        await #expect(throws: Boom.self) {
            try await db.pool.transaction { connection in
                try connection.query("INSERT INTO tx VALUES (1)")
                throw Boom()
            }
        }
        let count = try await db.pool.withConnection {
            try $0.query("SELECT count(*) FROM tx")[0].decode(0, as: Int.self)
        }
        #expect(count == 0)
    }

    @Test("COPY 100,000 rows in and out")
    func copyInAndOut() async throws {
        let db = try await TestDatabase.shared("postgres")
        let rowCount = 100_000
        let (copiedIn, copiedOut, checksum) = try await db.pool.withConnection { connection in
            try connection.execute("CREATE TABLE copy_rows (id bigint, label text, note text)")
            let copiedIn = try connection.copyIn("COPY copy_rows FROM STDIN") { writer in
                var row = CopyRow()
                for id in 0..<rowCount {
                    row.reset()
                    row.append(Int64(id))
                    row.append("row\t\(id) ünï\\")
                    row.append(id % 10 == 0 ? nil : "n")
                    row.endRow()
                    try writer.write(row.bytes)
                }
            }
            var lines = 0
            var checksum = 0
            let copiedOut = try connection.copyOut("COPY (SELECT id FROM copy_rows ORDER BY id) TO STDOUT") { bytes in
                lines += 1
                checksum += Int(String(decoding: bytes.dropLast(), as: UTF8.self)) ?? -1_000_000
            }
            #expect(lines == rowCount)
            let escaped = try connection.query("SELECT label, note IS NULL FROM copy_rows WHERE id = 70")
            #expect(escaped[0].text(0) == "row\t70 ünï\\")
            #expect(escaped[0].text(1) == "t")
            return (copiedIn, copiedOut, checksum)
        }
        #expect(copiedIn == rowCount)
        #expect(copiedOut == rowCount)
        #expect(checksum == (rowCount - 1) * rowCount / 2)
    }

    @Test("bad COPY data fails with its SQLSTATE and leaves the connection usable")
    func copyFailure() async throws {
        let db = try await TestDatabase.shared("postgres")
        try await db.pool.withConnection { connection in
            try connection.execute("CREATE TABLE IF NOT EXISTS copy_bad (id bigint)")
            do {
                try connection.copyIn("COPY copy_bad FROM STDIN") { writer in
                    try writer.write("1\nnot-a-number\n")
                }
                Issue.record("expected COPY to fail")
            } catch let error as PostgresError {
                #expect(error.sqlState == "22P02")
            }
            #expect(try connection.query("SELECT count(*) FROM copy_bad")[0].decode(0, as: Int.self) == 0)
        }
    }

    @Test("the pool serves 200 concurrent transactions with at most `size` connections")
    func poolUnderConcurrency() async throws {
        let db = try await TestDatabase.shared("postgres")
        let pool = PostgresPool(url: db.url, size: 4)
        try await pool.withConnection { connection in
            try connection.execute("CREATE TABLE counter (n int); INSERT INTO counter VALUES (0)")
        }
        let backends = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<200 {
                group.addTask {
                    try await pool.transaction { connection in
                        try connection.query("UPDATE counter SET n = n + 1")
                        return try connection.query("SELECT pg_backend_pid()")[0].decode(0, as: Int.self)
                    }
                }
            }
            var pids: Set<Int> = []
            for try await pid in group { pids.insert(pid) }
            return pids
        }
        let total = try await pool.withConnection { try $0.query("SELECT n FROM counter")[0].decode(0, as: Int.self) }
        #expect(total == 200)
        #expect(backends.count <= 4)
        await pool.close()
    }

    @Test("connection options override the URL's parameters and reach the session")
    func connectionOptions() async throws {
        let db = try await TestDatabase.shared("postgres")
        let url = db.url + (db.url.contains("?") ? "&" : "?") + "application_name=from-url"
        let (named, answered) = try await PostgresPool(url: url, size: 1).withConnection { _ in
            let connection = try PostgresConnection(
                url: url, options: ["application_name": "from-options", "keepalives_idle": "10"])
            return (
                try connection.query("SHOW application_name")[0].decode(0, as: String.self),
                try connection.query("SELECT 1")[0].decode(0, as: Int.self)
            )
        }
        #expect(named == "from-options")
        #expect(answered == 1)
        await #expect(throws: PostgresError.self) {
            try await PostgresPool(url: url, size: 1).withConnection { _ in
                _ = try PostgresConnection(url: url, options: ["no_such_option": "1"])
            }
        }
    }

    /// Found by a review of the shutdown: with libpq's default a connection to a server that
    /// accepted it and never answered (or a host that drops packets) waited for ever.
    @Test("a server that never answers fails the connection after the default timeout; the URL may say otherwise")
    func connectTimeout() async throws {
        #expect(PostgresConnection.defaults(environment: [:]).map(\.0) == ["connect_timeout"])
        #expect(PostgresConnection.defaults(environment: ["PGCONNECT_TIMEOUT": "3"]).isEmpty)
        // The environment's PGCONNECT_TIMEOUT, when set, is the default libpq applies instead.
        let byDefault =
            ProcessInfo.processInfo.environment["PGCONNECT_TIMEOUT"].flatMap(Int.init)
            ?? PostgresConnection.connectTimeoutSeconds
        for (parameters, within) in [("", Duration.seconds(byDefault)), ("?connect_timeout=2", .seconds(2))] {
            let silent = try SilentListener()
            // Without a timeout libpq waits for ever: the listener's end fails it instead, late.
            let watchdog = Task {
                try await Task.sleep(for: within + .seconds(10))
                silent.close()
            }
            let url = "postgres://tally@127.0.0.1:\(silent.port)/nowhere" + parameters
            let clock = ContinuousClock(), started = clock.now
            await #expect(throws: PostgresError.self) {
                try await PostgresPool(url: url, size: 1).withConnection { _ in }
            }
            let waited = clock.now - started
            #expect(waited >= within - .milliseconds(500) && waited < within + .seconds(5), "\(url): \(waited)")
            watchdog.cancel()
            if (try? await watchdog.value) == nil { silent.close() }
        }
    }

    @Test("connection errors never contain the password")
    func connectionErrorHidesPassword() async throws {
        let pool = PostgresPool(url: "postgres://tally:sup3r-s3cret@127.0.0.1:1/nowhere?connect_timeout=2", size: 1)
        do {
            try await pool.withConnection { _ = try $0.query("SELECT 1") }
            Issue.record("expected a connection failure")
        } catch let error as PostgresError {
            #expect(error.kind == .connection)
            #expect(error.isConnectionFailure)
            #expect(!error.description.contains("sup3r-s3cret"))
        }
    }

    /// Found by a review: libpq quotes the token of a URL it cannot read, which may be the password.
    @Test("a connection string libpq cannot read: its error never contains the password, in any spelling")
    func malformedURLHidesPassword() async throws {
        for url in [
            "postgres://tally:pa%zzword@127.0.0.1:1/nowhere", "host=127.0.0.1 port=1 password='pa ss word' dbname=x",
            "postgres://tally@127.0.0.1:1/nowhere?password=pa%zzword",
        ] {
            let pool = PostgresPool(url: url, size: 1)
            do {
                try await pool.withConnection { _ = try $0.query("SELECT 1") }
                Issue.record("expected a connection failure")
            } catch let error as PostgresError {
                #expect(
                    !error.description.contains("pa%zzword") && !error.description.contains("pa ss word"), "\(error)")
            }
            await pool.close()
        }
        #expect(
            PostgresConnection.redactingPassword(of: "postgres://u:s%41cret@h/d", in: "bad \"s%41cret\" or sAcret")
                == "bad \"***\" or ***")
    }

    @Test("Citus's XX000 relays: a lost worker is a connection failure, a worker's unique violation one")
    func citusRelayedErrors() {
        func relayed(_ message: String) -> PostgresError {
            PostgresError(kind: .copy, sqlState: SQLState.internalError, message: message)
        }
        #expect(relayed("failure on connection marked as essential: 127.0.0.1:55433").isConnectionFailure)
        #expect(relayed("terminating connection due to unexpected postmaster exit").isConnectionFailure)
        #expect(!relayed("could not open relation").isConnectionFailure)
        let duplicate = relayed("duplicate key value violates unique constraint \"request_logs_y2026m11_pkey_102054\"")
        #expect(duplicate.isUniqueViolationInCopy && !duplicate.isUniqueViolation && !duplicate.isConnectionFailure)
        #expect(!relayed("could not open relation").isUniqueViolationInCopy)
    }
}

/// Stops and restarts the shared test cluster: runs only in ops/test's own pass
/// (`TALLY_DISRUPTIVE_TESTS=1 swift test --filter ClusterRestartTests`).
@Suite("cluster restarts", .serialized, .enabled(if: disruptiveTestsEnabled))
struct ClusterRestartTests {
    @Test("the pool reconnects after PostgreSQL restarts")
    func reconnectAfterRestart() async throws {
        let db = try await TestDatabase.shared("postgres-restart")
        let pool = PostgresPool(url: db.url, size: 2)
        let before = try await pool.withConnection {
            try $0.query("SELECT pg_backend_pid()")[0].decode(0, as: Int.self)
        }
        try TestCluster.control("restart")
        // The first call may see the dead connection; within a few tries the pool reconnects.
        var after: Int?
        for _ in 0..<5 where after == nil {
            after = try? await pool.withConnection {
                try $0.query("SELECT pg_backend_pid()")[0].decode(0, as: Int.self)
            }
        }
        #expect(after != nil)
        #expect(after != before)
        await pool.close()
    }
}

/// A TCP socket on a free local port that takes connections (the kernel completes them on its
/// backlog) and never answers, as a server that hangs does.
struct SilentListener {
    let descriptor: Int32
    let port: Int

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, length) == 0 && listen(descriptor, 16) == 0
                    && getsockname(descriptor, $0, &length) == 0
            }
        }
        guard bound else { throw POSIXError(.EADDRINUSE) }
        self.descriptor = descriptor
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() { _ = Glibc.close(descriptor) }
}
