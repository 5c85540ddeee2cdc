import Dispatch
import Synchronization
import TallyTestSupport
import Testing

@testable import TallyPostgres

@Suite("pool cancellation")
struct PostgresPoolTests {
    final class Flag: Sendable {
        private let raised = Atomic<Bool>(false)
        var isRaised: Bool { raised.load(ordering: .relaxed) }
        func raise() { raised.store(true, ordering: .relaxed) }
    }

    @Test("a call cancelled while it waits for a connection leaves the line at once and never runs its SQL")
    func cancelledWaiter() async throws {
        let db = try await TestDatabase.shared("postgres")
        let pool = PostgresPool(url: db.url, size: 1)
        let gate = DispatchSemaphore(value: 0)
        let (started, holding) = AsyncStream<Void>.makeStream()
        let holder = Task {
            try await pool.withConnection { _ in
                holding.yield()
                gate.wait()  // keeps the only connection until the test lets go
            }
        }
        for await _ in started { break }
        // Lets go after a generous deadline even if the cancelled call never comes back, so a
        // regression fails below instead of hanging.
        let timedOut = Flag()
        let deadline = Task {
            try await Task.sleep(for: .seconds(20))
            timedOut.raise()
            gate.signal()
        }

        let ran = Flag()
        let waiter = Task {
            try await pool.withConnection { connection in
                ran.raise()
                try connection.execute("SELECT 1")
            }
        }
        let queued = ContinuousClock.now + .seconds(20)
        while pool.waiting == 0, ContinuousClock.now < queued { await Task.yield() }
        try #require(pool.waiting == 1, "the second call never waited in line")
        waiter.cancel()
        let outcome = await waiter.result
        #expect(!timedOut.isRaised, "the cancelled call waited until the connection came free")
        #expect(throws: CancellationError.self) { try outcome.get() }
        #expect(pool.waiting == 0)
        #expect(!ran.isRaised, "the cancelled call ran its SQL")

        deadline.cancel()
        gate.signal()
        try await holder.value
        #expect(try await pool.withConnection { try $0.query("SELECT 2")[0].decode(0, as: Int.self) } == 2)
        #expect(!ran.isRaised)
        await pool.close()
    }
}

@Suite("pool reconnection")
struct PostgresPoolReconnectionTests {
    @Test("an idle connection whose session the server ended is replaced before use: the next call succeeds")
    func endedSessionReplaced() async throws {
        let db = try await TestDatabase.shared("postgres")
        let pool = PostgresPool(url: db.url, size: 1)
        let ended = try await pool.withConnection {
            try $0.query("SELECT pg_backend_pid()")[0].decode(0, as: Int64.self)
        }
        // Ends the pooled connection's session from another one, as a PostgreSQL restart does.
        let admin = PostgresPool(url: db.url, size: 1)
        _ = try await admin.withConnection { try $0.query("SELECT pg_terminate_backend($1)", [ended]) }
        let gone = ContinuousClock.now + .seconds(10)
        while try await admin.withConnection({
            try $0.query("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", [ended])[0].decode(0, as: Int64.self)
        }) > 0, ContinuousClock.now < gone {
            try await Task.sleep(for: .milliseconds(20))
        }
        let now = try await pool.withConnection { try $0.query("SELECT pg_backend_pid()")[0].decode(0, as: Int64.self) }
        #expect(now != ended)
        await pool.close()
        await admin.close()
    }
}
