import Logging
import ServiceLifecycle
import Synchronization
import TallyCore
import TallyTestSupport
import Testing

@testable import TallyServer

/// The change listener against a real PostgreSQL: what each instance learns of changes made
/// elsewhere, and that it assumes the worst whenever it may have missed some.
@Suite("Enforcement: the change listener")
struct ChangeListenerTests {
    @Test(
        """
        opens its gate once it listens (the server takes requests from then on), hands on each notification, \
        and reports everything after its connection was cut
        """)
    func listensThenReconnects() async throws {
        let db = try await TestDatabase.create("listener")
        let seed = Seed(db: db)
        let notices = Mutex<[ChangeNotice]>([])
        func seen() -> [ChangeNotice] { notices.withLock { $0 } }
        let listening = StartupGate()
        let listener = ChangeListenerService(
            databaseURL: db.url, listening: listening,
            onChange: { notice in notices.withLock { $0.append(notice) } }, logger: Logger(label: "test.listener"))
        let group = ServiceGroup(services: [listener], logger: Logger(label: "test.listener"))
        let running = Task { try await group.run() }

        #expect(try await waitUntil { listening.isOpen })
        let session =
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'tally-change-listener'"
        #expect(try await seed.sql(session).count == 1)
        #expect(seen().isEmpty)
        _ = try await seed.sql("SELECT pg_notify('tally_changes', 'user:42')")
        #expect(try await waitUntil { seen() == [.user(42)] })

        _ = try await seed.sql("SELECT pg_terminate_backend((\(session)))")
        #expect(try await waitUntil { seen() == [.user(42), .everything] })
        _ = try await seed.sql("SELECT pg_notify('tally_changes', 'token:7')")
        #expect(try await waitUntil { seen() == [.user(42), .everything, .token(7)] })

        await group.triggerGracefulShutdown()
        try await running.value
    }

    /// Found by a review: a connection dropped without a word (a firewall's idle timeout, a
    /// failover) only polled quiet, so every change sent meanwhile went unheard for hours.
    @Test("a quiet connection is asked a SELECT 1 now and then, and notifications still come through after")
    func pingsWhenQuiet() async throws {
        let db = try await TestDatabase.create("listenerping")
        let seed = Seed(db: db)
        let notices = Mutex<[ChangeNotice]>([])
        let listening = StartupGate()
        let listener = ChangeListenerService(
            databaseURL: db.url, listening: listening,
            onChange: { notice in notices.withLock { $0.append(notice) } }, logger: Logger(label: "test.listener"),
            quietPing: .milliseconds(300))
        let group = ServiceGroup(services: [listener], logger: Logger(label: "test.listener"))
        let running = Task { try await group.run() }
        #expect(try await waitUntil { listening.isOpen })
        let lastQuery = """
            SELECT query FROM pg_stat_activity
            WHERE datname = current_database() AND application_name = 'tally-change-listener'
            """
        #expect(
            try await waitUntil(timeout: .seconds(10)) { try await seed.sql(lastQuery).first?.text(0) == "SELECT 1" })
        _ = try await seed.sql("SELECT pg_notify('tally_changes', 'user:5')")
        #expect(try await waitUntil { notices.withLock { $0 } == [.user(5)] })
        await group.triggerGracefulShutdown()
        try await running.value
    }
}
