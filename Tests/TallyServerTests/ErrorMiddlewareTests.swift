import Foundation
import Logging
import TallyPostgres
import Testing

@testable import TallyServer

/// What the caller is told for PostgreSQL's errors that reach a route (no database needed: the
/// errors are the ones libpq reports).
@Suite("errors from PostgreSQL answered by the error middleware")
struct ErrorMiddlewareTests {
    static let logger = Logger(label: "tally.test")

    static func answer(_ sqlState: String) -> (status: Int, code: String) {
        let error = PostgresError(kind: .query, sqlState: sqlState, message: "from PostgreSQL")
        let answer = ErrorMiddleware.apiError(for: error, logger: logger)
        return (answer.status, answer.code)
    }

    @Test("a deadlock or serialization failure left after the retries: 503 database_unavailable, retry")
    func lostRacesMayBeRetried() {
        for state in [SQLState.deadlockDetected, SQLState.serializationFailure] {
            let answer = Self.answer(state)
            #expect(answer.status == 503 && answer.code == "database_unavailable", "SQLSTATE \(state)")
        }
    }

    /// Found by a review: a sync authorize whose journal PostgreSQL refused for a timeout was
    /// answered 500, where the docs promised the 503 a gateway takes for "try again".
    @Test("a lost connection, a timeout, a full disk, a read-only standby are 503; any other SQL error is a bug: 500")
    func otherErrors() {
        #expect(Self.answer("08006").code == "database_unavailable")
        for state in ["57014", "55P03", "53100", "53300", "25006"] {
            #expect(Self.answer(state) == (503, "database_unavailable"), "SQLSTATE \(state)")
        }
        #expect(Self.answer(SQLState.uniqueViolation).status == 500)
        #expect(Self.answer(SQLState.uniqueViolation).code == "internal_error")
    }
}

/// Found by a review: while PostgreSQL was down every request logged its own warning, thousands
/// a second under a gateway's load, burying the outage's first line.
@Suite("warnings that repeat while PostgreSQL is out of reach")
struct RepeatedWarningLogTests {
    /// Keeps the messages a logger was given.
    final class Recorder: LogHandler, @unchecked Sendable {
        // Appended to from the test's task only.
        var lines: [(message: String, metadata: Logger.Metadata)] = []
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            lines.append((event.message.description, event.metadata ?? [:]))
        }
    }

    @Test(
        "a thousand requests that find the database down log one line; the next, 10 s on, says how many were left out")
    func oneLinePerInterval() {
        let recorder = Recorder()
        let logger = Logger(label: "tally.test") { _ in recorder }
        let warnings = RepeatedWarningLog()
        let down = PostgresError(kind: .connection, message: "connection refused")
        for _ in 0..<1_000 {
            #expect(ErrorMiddleware.apiError(for: down, logger: logger, warnings: warnings).status == 503)
        }
        #expect(recorder.lines.map(\.message) == ["database unavailable"])
        warnings.warning("database unavailable", to: logger, now: ProcessInfo.processInfo.systemUptime + 11)
        #expect(recorder.lines.count == 2)
        #expect(recorder.lines.last?.metadata["left_out"] == "999")
    }
}
