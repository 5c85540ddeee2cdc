import Foundation
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

@Suite("ingest exactly-once under a race")
struct IngestRaceTests {
    static func line(_ id: String, userID: Int64, tokenID: Int64, quota: Int64) -> PricedLine {
        PricedLine(
            requestID: id, createdAt: Date(timeIntervalSince1970: 1_794_312_000), userID: userID, tokenID: tokenID,
            channelID: nil, model: "gpt-4o", group: "default", kind: .chat, status: 200, isStream: false,
            durationMs: 10, ip: nil, tid: nil, error: nil, usage: Usage(promptTokens: 1000, completionTokens: 500),
            quota: quota, priceVersionID: 1)
    }

    @Test("a row committed by a concurrent batch after the duplicate check is not stored or charged twice")
    func concurrentInsertAfterCheck() async throws {
        let db = try await TestDatabase.shared("ingest-race")
        try await db.prepareBilling(users: 1)
        let (userID, tokenID) = try await db.syntheticAccount(1)
        let racer = try await TestSession.open(db.url)
        let racerPID = try await racer.run { try $0.query("SELECT pg_backend_pid()")[0].decode(0, as: Int64.self) }
        let contested = Self.line("race-contested", userID: userID, tokenID: tokenID, quota: 3750)
        // Another writer holds the contested id, uncommitted: the batch's check cannot see it.
        try await racer.run { racer in
            try racer.execute("BEGIN")
            try racer.query(
                """
                INSERT INTO request_logs
                    (request_id, created_at, user_id, token_id, model, "group", kind, status, quota)
                VALUES ($1, to_timestamp(1794312000), $2, $3, 'gpt-4o', 'default', 'chat', 200, 0)
                """, [contested.requestID, userID, tokenID])
        }
        let repository = PostgresIngestRepository(pool: db.pool)
        let batch = Task {
            try await repository.store(
                [contested, Self.line("race-fresh", userID: userID, tokenID: tokenID, quota: 3750)],
                rejects: [], totalLines: 2, tid: TraceID.generate(), source: "test")
        }
        // The batch reached its insert and waits for the racer's uncommitted row: the race is on.
        let blocked = try await db.queryBlocked(by: racerPID)
        // The batch's COPY now fails on the unique index and falls back.
        try await racer.run { try $0.execute("COMMIT") }
        let result = try await batch.value
        #expect(blocked?.contains("request_logs") == true, "the batch never waited for the racer (\(blocked ?? "-"))")
        #expect(result.accepted == 1)
        #expect(result.duplicates == 1)
        #expect(result.chargedQuota == 3750)
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'race-%'") == 2)
        #expect(try await db.scalar("SELECT used_quota FROM user_balances WHERE id = $1", [userID]) == 3750)
        #expect(
            try await db.scalar(
                "SELECT count(*) FROM request_logs WHERE request_id = 'race-fresh' AND batch_id = $1", [result.batchID])
                == 1)
    }

    @Test("batches holding the same ids in different orders wait for each other instead of deadlocking")
    func sameIDsInOtherOrder() async throws {
        let db = try await TestDatabase.shared("ingest-race")
        try await db.prepareBilling(users: 3)
        let (userID, tokenID) = try await db.syntheticAccount(3)
        let insert = """
            INSERT INTO request_logs (request_id, created_at, user_id, token_id, model, "group", kind, status, quota)
            VALUES ($1, to_timestamp(1794312000), $2, $3, 'gpt-4o', 'default', 'chat', 200, 0)
            """
        // Another writer (an instance storing the same lines) has inserted order-a, uncommitted.
        let racer = try await TestSession.open(db.url)
        let racerPID = try await racer.run { racer in
            try racer.execute("BEGIN")
            try racer.query(insert, ["order-a", userID, tokenID])
            return try racer.query("SELECT pg_backend_pid()")[0].decode(0, as: Int64.self)
        }
        let batch = Task {
            try await PostgresIngestRepository(pool: db.pool).store(
                [
                    Self.line("order-b", userID: userID, tokenID: tokenID, quota: 10),
                    Self.line("order-a", userID: userID, tokenID: tokenID, quota: 10),
                ],
                rejects: [], totalLines: 2, tid: TraceID.generate(), source: "test")
        }
        // The batch waits for the racer's order-a...
        let blocked = try await db.queryBlocked(by: racerPID)
        // ...so had it inserted order-b first, this would wait for it while it waits for order-a.
        try await racer.run { racer in
            try racer.query(insert, ["order-b", userID, tokenID])
            try racer.execute("COMMIT")
        }
        let result = try await batch.value
        #expect(blocked?.contains("request_logs") == true, "the batch never waited for the racer (\(blocked ?? "-"))")
        #expect(result.accepted == 0)
        #expect(result.duplicates == 2)
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'order-%'") == 2)
    }

    @Test("a line repeated inside one batch is stored once")
    func duplicateWithinBatch() async throws {
        let db = try await TestDatabase.shared("ingest-race")
        try await db.prepareBilling(users: 2)
        let (userID, tokenID) = try await db.syntheticAccount(2)
        let line = Self.line("twin", userID: userID, tokenID: tokenID, quota: 100)
        let result = try await PostgresIngestRepository(pool: db.pool).store(
            [line, line, line], rejects: [], totalLines: 3,
            tid: TraceID.generate(), source: "test")
        #expect(result.accepted == 1)
        #expect(result.duplicates == 2)
        #expect(try await db.scalar("SELECT used_quota FROM user_balances WHERE id = $1", [userID]) == 100)
    }
}
