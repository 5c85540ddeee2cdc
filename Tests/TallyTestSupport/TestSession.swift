import Dispatch
import TallyPostgres

/// A PostgreSQL session of a test's own, kept across awaits: a second writer that holds a
/// transaction open while the code under test runs (a pooled connection would be rolled back
/// between calls). Its blocking libpq calls run on a serial queue of its own, never on the
/// concurrency pool, as `PostgresPool` runs them.
public final class TestSession: @unchecked Sendable {
    // `connection` is used only on `queue`, one call at a time.
    private let queue: DispatchQueue
    private let connection: PostgresConnection

    private init(queue: DispatchQueue, connection: PostgresConnection) {
        self.queue = queue
        self.connection = connection
    }

    public static func open(_ url: String) async throws -> TestSession {
        let queue = DispatchQueue(label: "tally.test-session")
        let connection = try await Self.run(on: queue) { try PostgresConnection(url: url) }
        return TestSession(queue: queue, connection: connection)
    }

    /// Runs `body` with the session's connection on its queue.
    public func run<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let connection = connection
        return try await Self.run(on: queue) { try body(connection) }
    }

    private static func run<T: Sendable>(on queue: DispatchQueue, _ work: @escaping @Sendable () throws -> T)
        async throws -> T
    {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try work() }) }
        }
    }
}
