import Foundation
import TallyCore
import TallyPostgres
import TallyTestSupport
import Testing

@testable import TallyStore

/// The lease and journal functions keep one generic plan per statement (migration 0017); those
/// plans must reach each account by its key whatever the statistics were when they were made
/// (migration 0021).
@Suite("lease plans")
struct LeasePlanTests {
    /// The tables a lease or journal call touches per account; any whole read of them makes a
    /// call cost the size of the table instead of the accounts it names.
    static let accountTables = ["users", "tokens", "user_leases", "token_leases", "holds"]

    @Test(
        "tally_lease and tally_journal_holds read a few rows per account they name, with plans made while the tables were empty and never analyzed (migration 0021)"
    )
    func leaseAndJournalProbeByKey() async throws {
        let db = try await TestDatabase.create("lease-plans")
        // The state right after accounts are created or imported: autovacuum has not analyzed
        // the tables yet (it would within a minute; here it never does).
        try await db.pool.withConnection { connection in
            for table in Self.accountTables {
                try connection.execute("ALTER TABLE \(table) SET (autovacuum_enabled = false)")
            }
        }
        let accounts = 2_000
        try await db.prepareBilling(users: accounts)
        try await db.pool.withConnection { connection in
            try connection.execute("UPDATE tokens SET unlimited_quota = false, remain_quota = 1000000000")
        }
        let ids = try await db.pool.withConnection { connection in
            try connection.query("SELECT u.id, t.id FROM users u JOIN tokens t ON t.user_id = u.id ORDER BY u.id")
                .map { (user: try $0.decode(0, as: Int64.self), token: try $0.decode(1, as: Int64.self)) }
        }
        #expect(ids.count == accounts)

        let leases = PostgresLeaseRepository(pool: db.pool)
        try await leases.register(instance: "warm", ttlSeconds: 600, reclaimAfterSeconds: 0)
        try await leases.register(instance: "probe", ttlSeconds: 600, reclaimAfterSeconds: 0)

        // A connection makes its plans on its first calls, while the lease and hold tables are
        // still empty (as when a server starts on a new database) and keeps them.
        let fresh = db.reopened(poolSize: 1)
        try await fresh.pool.withConnection { connection in
            for round in 0..<2 { try Self.leaseAndJournal(ids, round: round, on: connection) }
        }

        // Then both instances lease every account and journal a hold on each, as a warm-up
        // does: the lease and hold tables grow as big as the accounts'.
        for instance in ["warm", "probe"] {
            _ = try await leases.lease(
                instance: instance,
                wants: ids.flatMap { [AccountUnits(.user($0.user), 100_000), AccountUnits(.token($0.token), 100_000)] })
            _ = try await leases.journal(
                instance: instance,
                holds: ids.enumerated().map { index, account in
                    JournaledHold(
                        id: Int64((instance == "warm" ? 1_000_000 : 2_000_000) + index),
                        request: HoldRequest(
                            requestID: "\(instance)-\(index)", userID: account.user, tokenID: account.token,
                            model: "gpt-4o", amount: 10, tid: "t"),
                        tokenLeased: true)
                }, ttlSeconds: 600)
        }

        // The same connection's calls, and what they read.
        let reads = try await fresh.pool.withConnection { connection in
            try connection.reads(of: Self.accountTables) {
                for round in 2..<5 { try Self.leaseAndJournal(ids, round: round, on: connection) }
            }.reads
        }
        for table in reads {
            // 3 lease and 3 journal calls of 3 accounts each: a few rows per call, not thousands.
            #expect(table.sequentialScans == 0 && table.rows <= 200, "\(table)")
        }
        await fresh.pool.close()
    }

    @Test(
        "tally_lease reads pending charges by key even with plans made while the queue was vacuumed to nothing (migration 0024)"
    )
    func leaseProbesPendingChargesByKey() async throws {
        let db = try await TestDatabase.create("lease-pending-plans")
        let accounts = 100
        try await db.prepareBilling(users: accounts)
        let ids = try await db.pool.withConnection { connection in
            try connection.execute("UPDATE tokens SET unlimited_quota = false, remain_quota = 1000000000")
            // The queue as the fold and autovacuum leave it between batches: drained, then
            // truncated, so the statistics say it is empty.
            try connection.execute(
                """
                ALTER TABLE pending_charges SET (autovacuum_enabled = false);
                INSERT INTO pending_charges (user_id, token_id, batch_id, quota, requests, user_returned, token_returned)
                SELECT n, n, 1, 1, 1, 0, 0 FROM generate_series(1, 1000) n;
                DELETE FROM pending_charges;
                """)
            try connection.execute("VACUUM pending_charges")
            return try connection.query(
                "SELECT u.id, t.id FROM users u JOIN tokens t ON t.user_id = u.id ORDER BY u.id"
            )
            .map { (user: try $0.decode(0, as: Int64.self), token: try $0.decode(1, as: Int64.self)) }
        }
        try await PostgresLeaseRepository(pool: db.pool).register(
            instance: "probe", ttlSeconds: 600, reclaimAfterSeconds: 0)
        // A connection makes its plans now, and keeps them.
        let fresh = db.reopened(poolSize: 1)
        try await fresh.pool.withConnection { connection in
            for round in 0..<2 { try Self.leaseAndJournal(ids, round: round, on: connection) }
        }
        // Then batches queue charges for other accounts faster than the fold drains them.
        try await db.pool.withConnection { connection in
            try connection.execute(
                """
                INSERT INTO pending_charges (user_id, token_id, batch_id, quota, requests, user_returned, token_returned)
                SELECT 1000000 + n, 1000000 + n, 2, 1, 1, 0, 0 FROM generate_series(1, 20000) n
                """)
        }
        let reads = try await fresh.pool.withConnection { connection in
            try connection.reads(of: ["pending_charges"]) {
                for round in 2..<5 { try Self.leaseAndJournal(ids, round: round, on: connection) }
            }.reads[0]
        }
        #expect(reads.sequentialScans == 0 && reads.rows <= 100, "\(reads), for 3 leases of 3 accounts")
        await fresh.pool.close()
    }

    /// One lease call and one journal call for three accounts of `ids` (round 3 journals
    /// round 2's request ids again: the journal then answers from `holds`).
    static func leaseAndJournal(_ ids: [(user: Int64, token: Int64)], round: Int, on connection: PostgresConnection)
        throws
    {
        let some = ids[(round * 7)..<(round * 7 + 3)]
        let users = some.map { String($0.user) }.joined(separator: ",")
        let tokens = some.map { String($0.token) }.joined(separator: ",")
        _ = try connection.query(
            """
            SELECT count(*) FROM tally_lease('probe', ARRAY[\(users)]::bigint[], ARRAY[50000, 50000, 50000]::bigint[],
                                             ARRAY[\(tokens)]::bigint[], ARRAY[50000, 50000, 50000]::bigint[])
            """)
        let requests = (0..<3).map { "'probe-\(round == 3 ? 2 : round)-\($0)'" }.joined(separator: ",")
        _ = try connection.query(
            """
            SELECT count(*) FROM tally_journal_holds('probe', ARRAY[\(round * 3 + 1), \(round * 3 + 2), \(round * 3 + 3)]::bigint[],
                ARRAY[\(requests)], ARRAY[\(users)]::bigint[], ARRAY[\(tokens)]::bigint[],
                ARRAY[100, 100, 100]::bigint[], ARRAY['gpt-4o', 'gpt-4o', 'gpt-4o'], ARRAY['t', 't', 't'],
                ARRAY[true, true, true], 600)
            """)
    }
}
