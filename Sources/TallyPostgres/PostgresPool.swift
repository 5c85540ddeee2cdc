import Dispatch
import Logging
import Synchronization

/// A bounded pool of libpq connections. Each connection lives on its own serial dispatch queue,
/// so blocking libpq calls never run on a Swift concurrency or NIO event-loop thread.
///
/// Connections are opened lazily and replaced after they break (for example when PostgreSQL
/// restarts): the call that sees the failure gets the error, the next call reconnects.
public final class PostgresPool: Sendable {
    /// The connection URL (libpq conninfo or `postgres://` URI). Never logged.
    private let url: String
    public let size: Int
    private let logger: Logger
    private let state: Mutex<State>

    private struct State {
        var idle: [Worker] = []
        var created = 0
        var waiters: [CheckedContinuation<Worker, Never>] = []
    }

    public init(url: String, size: Int = 8, logger: Logger = Logger(label: "tally.postgres")) {
        precondition(size > 0, "pool size must be positive")
        self.url = url
        self.size = size
        self.logger = logger
        self.state = Mutex(State())
    }

    /// Runs `body` with a connection on a worker thread. The connection is returned to the pool
    /// afterwards; a connection left inside a transaction is rolled back first.
    public func withConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        let worker = await acquire()
        defer { release(worker) }
        return try await worker.run(url: url, logger: logger, body)
    }

    /// Runs `body` inside a transaction on one pooled connection.
    public func transaction<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await withConnection { connection in try connection.transaction(body) }
    }

    /// Closes every idle connection (`PQfinish`); in-flight work finishes first.
    public func close() async {
        let workers = state.withLock { state -> [Worker] in
            let idle = state.idle
            state.idle.removeAll()
            state.created -= idle.count
            return idle
        }
        for worker in workers { await worker.close() }
    }

    private func acquire() async -> Worker {
        enum Decision { case ready(Worker), create, wait }
        let decision = state.withLock { state -> Decision in
            if let worker = state.idle.popLast() { return .ready(worker) }
            if state.created < size {
                state.created += 1
                return .create
            }
            return .wait
        }
        switch decision {
        case .ready(let worker): return worker
        case .create: return Worker(index: state.withLock { $0.created })
        case .wait:
            return await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Worker? in
                    if let worker = state.idle.popLast() { return worker }
                    state.waiters.append(continuation)
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        }
    }

    private func release(_ worker: Worker) {
        let waiter = state.withLock { state -> CheckedContinuation<Worker, Never>? in
            if state.waiters.isEmpty {
                state.idle.append(worker)
                return nil
            }
            return state.waiters.removeFirst()
        }
        waiter?.resume(returning: worker)
    }
}

/// A pool slot: a serial queue that owns at most one connection.
private final class Worker: @unchecked Sendable {
    // `connection` is read and written only on `queue`.
    private var connection: PostgresConnection?
    private let queue: DispatchQueue

    init(index: Int) {
        queue = DispatchQueue(label: "tally.postgres.worker.\(index)")
    }

    func run<T: Sendable>(url: String, logger: Logger, _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async {
                do {
                    let connection = try self.connectedConnection(url: url)
                    defer { self.cleanUp(connection, logger: logger) }
                    continuation.resume(returning: try body(connection))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    func close() async {
        await withCheckedContinuation { continuation in
            queue.async {
                self.connection = nil
                continuation.resume()
            }
        }
    }

    private func connectedConnection(url: String) throws(PostgresError) -> PostgresConnection {
        if let connection, connection.isHealthy { return connection }
        connection = nil
        let fresh = try PostgresConnection(url: url)
        connection = fresh
        return fresh
    }

    private func cleanUp(_ connection: PostgresConnection, logger: Logger) {
        guard connection.isHealthy else {
            logger.warning("dropping a broken PostgreSQL connection; the next call reconnects")
            self.connection = nil
            return
        }
        if connection.inTransaction { try? connection.execute("ROLLBACK") }
    }
}
