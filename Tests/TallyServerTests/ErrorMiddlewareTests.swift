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

    @Test("a lost connection is 503 too; any other SQL error is a bug: 500 internal_error")
    func otherErrors() {
        #expect(Self.answer("08006").code == "database_unavailable")
        #expect(Self.answer(SQLState.uniqueViolation).status == 500)
        #expect(Self.answer(SQLState.uniqueViolation).code == "internal_error")
    }
}
