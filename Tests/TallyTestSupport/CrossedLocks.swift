import TallyPostgres

/// Tests that cross two sessions' locks into a deadlock. PostgreSQL checks a waiting session for
/// a deadlock once, `deadlock_timeout` after its wait began, and aborts the session whose check
/// finds the cycle: the session meant to lose gets a shorter timeout than the other (which sets
/// `SET LOCAL deadlock_timeout = '60s'`), and one long enough for the test to close the cycle on
/// a loaded machine.
extension TestDatabase {
    /// A pool of its own whose sessions check for a deadlock `deadlockTimeout` after their wait
    /// began (the server's default is 1 s).
    public func pool(deadlockTimeout: String, size: Int = 2) -> PostgresPool {
        let options = "options=-c%20deadlock_timeout%3D\(deadlockTimeout)"
        return PostgresPool(url: url + (url.contains("?") ? "&" : "?") + options, size: size)
    }

    /// Waits until `count` sessions of this database wait for a lock, here or (Citus) for the
    /// worker that holds it; `query` narrows them to the statements that contain it.
    public func sessionsWaiting(_ count: Int, running query: String = "", timeout: Duration = .seconds(10))
        async throws -> Bool
    {
        try await waitUntil(timeout: timeout) {
            try await scalar(
                """
                SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'
                AND pid <> pg_backend_pid() AND wait_event_type IN ('Lock', 'IPC', 'Client', 'Extension')
                AND query LIKE $1
                """, ["%\(query)%"]) == count
        }
    }
}
