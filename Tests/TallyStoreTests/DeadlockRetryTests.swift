import Synchronization
import TallyPostgres
import Testing

@testable import TallyStore

/// The retry of work PostgreSQL aborted to break a deadlock (ingest batches and the lease books'
/// calls use it; on Citus two batches holding the same ids can lose several times in a row). No
/// database: the work throws the errors PostgreSQL would, and the pauses are recorded instead
/// of slept.
@Suite("retrying work aborted in a deadlock, with pauses")
struct DeadlockRetryTests {
    static let deadlock = PostgresError(kind: .copy, sqlState: SQLState.deadlockDetected, message: "deadlock detected")
    static let backoff = DeadlockBackoff(tries: 6, firstPause: .milliseconds(25))

    /// Runs the retry around work that fails with `failures` in turn, then answers 7.
    static func run(failing failures: [PostgresError], failedSoFar: Int = 0) async throws -> (
        value: Int, tries: Int, pauses: [Duration]
    ) {
        let tries = Mutex(0)
        let pauses = Mutex<[Duration]>([])
        let value = try await retryingDeadlocks(
            pausing: backoff, failedSoFar: failedSoFar, sleep: { pause in pauses.withLock { $0.append(pause) } }
        ) {
            let attempt = tries.withLock { tries in
                tries += 1
                return tries
            }
            if attempt <= failures.count { throw failures[attempt - 1] }
            return 7
        }
        return (value, tries.withLock { $0 }, pauses.withLock { $0 })
    }

    @Test("five deadlocks in a row: the sixth try succeeds, after pauses that double from 25 ms")
    func retriesWithDoublingPauses() async throws {
        let outcome = try await Self.run(failing: Array(repeating: Self.deadlock, count: 5))
        #expect(outcome.value == 7)
        #expect(outcome.tries == 6)
        #expect(outcome.pauses.count == 5)
        for (index, pause) in outcome.pauses.enumerated() {
            let longest = Duration.milliseconds(25) * (1 << index)
            #expect(pause >= longest / 2 && pause <= longest, "pause \(index + 1): \(pause)")
        }
    }

    @Test("a serialization failure is retried like a deadlock")
    func retriesSerializationFailures() async throws {
        let failure = PostgresError(
            kind: .query, sqlState: SQLState.serializationFailure, message: "could not serialize")
        let outcome = try await Self.run(failing: [failure])
        #expect(outcome.value == 7)
        #expect(outcome.tries == 2)
    }

    @Test("the sixth deadlock is the caller's error; nothing is tried a seventh time")
    func givesUpAfterTheLastTry() async throws {
        let tries = Mutex(0)
        await #expect(throws: PostgresError.self) {
            _ = try await retryingDeadlocks(pausing: Self.backoff, sleep: { _ in }) {
                tries.withLock { $0 += 1 }
                throw Self.deadlock
            }
        }
        #expect(tries.withLock { $0 } == 6)
    }

    @Test("any other error is the caller's at once: no pause, no second try")
    func otherErrorsAreNotRetried() async throws {
        let unique = PostgresError(kind: .copy, sqlState: "23505", message: "duplicate key")
        let tries = Mutex(0)
        let pauses = Mutex(0)
        await #expect(throws: PostgresError.self) {
            _ = try await retryingDeadlocks(pausing: Self.backoff, sleep: { _ in pauses.withLock { $0 += 1 } }) {
                tries.withLock { $0 += 1 }
                throw unique
            }
        }
        #expect(tries.withLock { $0 } == 1)
        #expect(pauses.withLock { $0 } == 0)
    }

    @Test("a batch that already lost a try elsewhere pauses before its first try here")
    func pausesAfterEarlierLosses() async throws {
        let outcome = try await Self.run(failing: [], failedSoFar: 1)
        #expect(outcome.tries == 1)
        #expect(outcome.pauses.count == 1)
        #expect(outcome.pauses[0] >= .milliseconds(12.5) && outcome.pauses[0] <= .milliseconds(25))
    }
}
