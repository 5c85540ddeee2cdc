import Dispatch
import Logging
import Synchronization

/// A bounded pool of libpq connections. Each connection lives on its own serial dispatch queue,
/// so blocking libpq calls never run on a Swift concurrency or NIO event-loop thread.
///
/// Connections are opened lazily and replaced after they break (for example when PostgreSQL
/// restarts): an idle connection whose session the server ended is replaced before it is handed
/// out; a connection that breaks during a call fails that call, and the next call reconnects. A call
/// that has to wait for a connection waits in line; cancelling its task takes it out of the
/// line at once (`CancellationError`), and its work never runs.
public final class PostgresPool: Sendable {
    /// The connection URL (libpq conninfo or `postgres://` URI). Never logged.
    private let url: String
    public let size: Int
    private let logger: Logger
    private typealias State = PoolState<Worker, CheckedContinuation<Worker, any Error>>
    private let state: Mutex<State>

    public init(url: String, size: Int = 8, logger: Logger = Logger(label: "tally.postgres")) {
        self.url = url
        self.size = size
        self.logger = logger
        self.state = Mutex(PoolState(capacity: size))
    }

    /// Runs `body` with a connection on a worker thread. The connection is returned to the pool
    /// afterwards; a connection left inside a transaction is rolled back first. Throws
    /// `CancellationError` when the task is cancelled while it waits for a connection.
    public func withConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws
        -> T
    {
        let worker = try await acquire()
        defer { release(worker) }
        return try await worker.run(url: url, logger: logger, body)
    }

    /// Runs `body` inside a transaction on one pooled connection.
    public func transaction<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T
    {
        try await withConnection { connection in try connection.transaction(body) }
    }

    /// Calls waiting for a connection now.
    var waiting: Int { state.withLock { $0.queuedWaiters.count } }

    /// Closes every idle connection (`PQfinish`); in-flight work finishes first.
    public func close() async {
        for worker in state.withLock({ $0.takeIdle() }) { await worker.close() }
    }

    private func acquire() async throws -> Worker {
        let id: UInt64
        switch state.withLock({ $0.acquire() }) {
        case .granted(let grant): return Self.worker(for: grant)
        case .wait(let waiterID): id = waiterID
        }
        let worker = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                switch state.withLock({ $0.wait(continuation, id: id, cancelled: Task.isCancelled) }) {
                case .granted(let grant): continuation.resume(returning: Self.worker(for: grant))
                case .cancelled: continuation.resume(throwing: CancellationError())
                case .queued: break
                }
            }
        } onCancel: {
            state.withLock { $0.cancel(id: id) }?.resume(throwing: CancellationError())
        }
        // Cancelled just as a connection came free: hand it on rather than run the work.
        if Task.isCancelled {
            release(worker)
            throw CancellationError()
        }
        return worker
    }

    private static func worker(for grant: State.Grant) -> Worker {
        switch grant {
        case .use(let worker): worker
        case .create(let index): Worker(index: index)
        }
    }

    private func release(_ worker: Worker) {
        state.withLock { $0.release(worker) }?.resume(returning: worker)
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

    func run<T: Sendable>(url: String, logger: Logger, _ body: @escaping @Sendable (PostgresConnection) throws -> T)
        async throws -> T
    {
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
        if let connection, connection.isUsableAfterIdle() { return connection }
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
