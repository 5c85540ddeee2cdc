import Foundation
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

@Suite("the audit of the books")
struct AuditorTests {
    /// A charge booked under another key of the books: every user's figures and every key's
    /// rollups still agree, so only the keys' ledger charges show it.
    @Test("a ledger charge under the wrong key is found: each key's used quota = its ledger charges")
    func chargeUnderAnotherKey() async throws {
        let db = try await TestDatabase.create("audit-keys")
        try await db.prepareBilling(users: 2)
        let accounts = [try await db.syntheticAccount(1), try await db.syntheticAccount(2)]
        let lines = accounts.enumerated().map { index, account in
            IngestRaceTests.line("audit-\(index)", userID: account.user, tokenID: account.token, quota: 3750)
        }
        _ = try await PostgresIngestRepository(pool: db.pool).store(
            lines, rejects: [], totalLines: lines.count, tid: TraceID.generate(), source: "test")
        try await db.fold()
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
        // The first user's charge moved to the second user's key, the user left as it was.
        try await db.pool.withConnection {
            try $0.execute(
                "UPDATE ledger SET token_id = \(accounts[1].token) WHERE kind = 'charge' AND token_id = \(accounts[0].token)"
            )
        }
        let problems = try await Auditor(pool: db.pool).run().map(\.problem)
        #expect(problems.count == 2, "\(problems)")
        #expect(problems.allSatisfy { $0.contains("ledger charges sum to") }, "\(problems)")
    }

    /// Found by a review: the whole audit compared lifetime totals only, so a charge in the wrong
    /// month (its amount right) showed only in `--month` and in that month's statement.
    @Test("a ledger charge booked in the wrong month is found by the whole audit")
    func chargeInAnotherMonth() async throws {
        let db = try await TestDatabase.create("audit-months")
        try await db.prepareBilling(users: 1)
        let account = try await db.syntheticAccount(1)
        let lines = [IngestRaceTests.line("audit-month", userID: account.user, tokenID: account.token, quota: 3750)]
        _ = try await PostgresIngestRepository(pool: db.pool).store(
            lines, rejects: [], totalLines: 1, tid: TraceID.generate(), source: "test")
        try await db.fold()
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
        try await db.pool.withConnection {
            try $0.execute(
                "UPDATE ledger SET usage_month = (month - interval '1 month')::date WHERE kind = 'charge'")
        }
        let problems = try await Auditor(pool: db.pool).run().map(\.problem)
        #expect(problems.count == 2, "\(problems)")
        #expect(problems.allSatisfy { $0.contains("ledger charges") && $0.contains("usage rollups (exports)") })
    }
}
