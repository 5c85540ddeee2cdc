import Foundation
import TallyPostgres
import TallyTestSupport
import Testing

@testable import TallyStore

/// Closed holds are kept an hour (a late retry of the request id still finds its hold), then
/// deleted by every instance's upkeep, which runs every few seconds.
@Suite("holds in PostgreSQL")
struct HoldRepositoryTests {
    @Test("purging closed holds reads only the holds it deletes, not the hour of closed holds kept")
    func purgeReadsWhatItDeletes() async throws {
        let db = try await TestDatabase.create("holds-purge")
        let kept = 20_000, old = 10
        let reads = try await db.pool.withConnection { connection in
            try connection.execute(
                """
                INSERT INTO holds (request_id, user_id, token_id, model, amount, status, expires_at, closed_at)
                SELECT 'kept-' || n, 1, 1, 'gpt-4o', 10, 'settled', now(), now() - interval '1 second' * (n % 3000)
                FROM generate_series(1, \(kept)) n;
                INSERT INTO holds (request_id, user_id, token_id, model, amount, status, expires_at, closed_at)
                SELECT 'old-' || n, 1, 1, 'gpt-4o', 10, 'expired', now(), now() - interval '2 hours'
                FROM generate_series(1, \(old)) n;
                INSERT INTO holds (request_id, user_id, token_id, model, amount, expires_at)
                SELECT 'open-' || n, 1, 1, 'gpt-4o', 10, now() + interval '10 minutes' FROM generate_series(1, 5) n;
                ANALYZE holds
                """)
            // Purged in rounds of 4 on one connection, as upkeep does: the first rounds planned
            // for their parameters, the rest on the statement's generic plan, which the server
            // may end with (PostgreSQL switches to it when the custom plans cost about the
            // same, as on stale statistics). The backend's table counters, before and after, in
            // one transaction (they are not published inside one), say what the rounds read.
            func counters() throws -> (scans: Int64, rows: Int64) {
                let row = try connection.query(
                    """
                    SELECT seq_scan, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
                    FROM pg_stat_xact_user_tables WHERE relname = 'holds'
                    """)[0]
                return (try row.decode(0), try row.decode(1))
            }
            try connection.execute("BEGIN")
            let before = try counters()
            var purged: [Int] = []
            for round in 0..<7 {
                if round == 2 { try connection.execute("SET LOCAL plan_cache_mode = force_generic_plan") }
                purged.append(
                    try connection.query(PostgresHoldRepository.purge, [3_600, 4])[0].decode(0, as: Int.self))
            }
            let after = try counters()
            try connection.execute("COMMIT")
            #expect(purged == [4, 4, 2, 0, 0, 0, 0])
            return (scans: after.scans - before.scans, rows: after.rows - before.rows)
        }
        #expect(reads.scans == 0, "a purge scanned the whole table")
        #expect(reads.rows < 100, "the purges read \(reads.rows) rows to delete \(old)")
        let left = try await db.pool.withConnection {
            try $0.query("SELECT count(*) FROM holds")[0].decode(0, as: Int.self)
        }
        #expect(left == kept + 5)
    }

    @Test(
        "closing a hold (expiry, release) probes it by key, even after plans made while few holds were open (migration 0024)"
    )
    func closingProbesByKey() async throws {
        let db = try await TestDatabase.create("holds-close-plans")
        let open = 20_000
        let reads = try await db.pool.withConnection { connection in
            // Statistics taken while no hold was open; then a burst of open holds.
            try connection.execute(
                """
                ALTER TABLE holds SET (autovacuum_enabled = false);
                INSERT INTO holds (request_id, user_id, token_id, model, amount, status, expires_at, closed_at)
                SELECT 'closed-' || n, 1, 1, 'gpt-4o', 0, 'settled', now(), now() FROM generate_series(1, 2000) n;
                ANALYZE holds;
                INSERT INTO holds (request_id, user_id, token_id, model, amount, expires_at)
                SELECT 'open-' || n, 1, 1, 'gpt-4o', 0, now() + interval '10 minutes' FROM generate_series(1, \(open)) n
                """)
            let ids = try connection.query("SELECT id FROM holds WHERE status = 'held' ORDER BY id LIMIT 7")
                .map { try $0.decode(0, as: Int64.self) }
            func counters() throws -> (scans: Int64, rows: Int64) {
                let row = try connection.query(
                    """
                    SELECT seq_scan, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
                    FROM pg_stat_xact_user_tables WHERE relname = 'holds'
                    """)[0]
                return (try row.decode(0), try row.decode(1))
            }
            // Released one by one on one connection, past the five calls after which a
            // statement may keep its generic plan.
            try connection.execute("BEGIN")
            let before = try counters()
            var closed = 0
            for id in ids {
                closed += try connection.query(
                    PostgresHoldRepository.closeHolds, [PostgresArray.integers([id]), "released"]
                ).count
            }
            let after = try counters()
            try connection.execute("ROLLBACK")
            #expect(closed == ids.count)
            return (scans: after.scans - before.scans, rows: after.rows - before.rows)
        }
        #expect(reads.scans == 0, "\(reads.scans) sequential scans of holds")
        #expect(reads.rows <= 100, "\(reads.rows) holds read to close 7 of \(open) open ones")
    }
}
