import Foundation
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// Top-up idempotency keys are unique per account in the ledger's index (migration 0019, so that
/// Citus can enforce it per shard); a lock on the key makes them unique across accounts.
@Suite("top-up idempotency keys across accounts")
struct TopUpKeyRaceTests {
    @Test("a top-up whose key another account's top-up holds, uncommitted, waits for it, then conflicts")
    func keyHeldByAnotherAccount() async throws {
        let db = try await TestDatabase.shared("topup-key-race")
        try await db.prepareBilling(users: 2)
        let users = try await db.pool.withConnection { connection in
            try connection.query("SELECT id FROM users WHERE username LIKE 'synthetic-%' ORDER BY id LIMIT 2")
                .map { try $0.decode(0, as: Int64.self) }
        }
        let key = "race-\(UUID().uuidString)"
        // The other account's top-up, mid-transaction: its key locked as Balances does, its row written.
        let racer = try await TestSession.open(db.url)
        let racerPID = try await racer.run { racer in
            try racer.execute("BEGIN")
            try racer.query("SELECT pg_advisory_xact_lock(2047934483, hashtext($1))", ["topup:" + key])
            try racer.query(
                """
                INSERT INTO ledger (user_id, kind, amount, reason, idempotency_key) VALUES ($1, 'topup', 5, 'racer', $2)
                """, [users[1], "topup:" + key])
            return try racer.query("SELECT pg_backend_pid()")[0].decode(0, as: Int64.self)
        }
        let topUp = Task {
            try await BalanceRepository(pool: db.pool)
                .topUp(userID: users[0], amount: 7, reason: "", idempotencyKey: key, by: .cli)
        }
        let blocked = try await db.queryBlocked(by: racerPID, timeout: .seconds(30))
        try await racer.run { try $0.execute("COMMIT") }
        #expect(blocked != nil, "the top-up never waited for the other account's use of its key")
        do {
            let result = try await topUp.value
            Issue.record("the key was used twice: \(result)")
        } catch StoreError.conflict(let message) {
            #expect(message.contains("user \(users[1])"))
        }
        #expect(try await db.scalar("SELECT count(*) FROM ledger WHERE idempotency_key = $1", ["topup:" + key]) == 1)
    }
}
