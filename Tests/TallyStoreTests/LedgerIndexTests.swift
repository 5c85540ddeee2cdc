import Foundation
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// Every batch appends its charges to the ledger: only the indexes a reader of charge rows needs
/// take an entry per charge (migration 0020).
@Suite("ledger indexes")
struct LedgerIndexTests {
    @Test("a charge row enters only the primary key and (user, month)")
    func chargeRowsEnterFewIndexes() async throws {
        let db = try await TestDatabase.shared("store")
        let indexes = try await db.pool.withConnection { connection in
            try connection.query(
                """
                SELECT c.relname::text, coalesce(pg_get_expr(i.indpred, i.indrelid), '')
                FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = 'ledger'::regclass ORDER BY 1
                """
            ).map { (try $0.decode(0, as: String.self), try $0.decode(1, as: String.self)) }
        }
        let enteredByCharges = indexes.filter {
            !$0.1.contains("<> 'charge'") && !$0.1.contains("idempotency_key IS NOT NULL")
        }.map(\.0)
        #expect(
            enteredByCharges == ["ledger_pkey", "ledger_user_month_idx"],
            "\(indexes)")
    }

    @Test("an account's credits, newest first, and its rows by month are read by index")
    func readersKeepTheirIndexes() async throws {
        let db = try await TestDatabase.shared("store")
        let user: Int64 = 1
        let readers: [(String, String, [any PostgresEncodable])] = [
            // The log page's credit rows of one account (Logs.creditConditions).
            (
                "ledger_user_credits_at_idx",
                """
                SELECT g.id FROM ledger g WHERE g.kind <> 'charge' AND g.kind = ANY ($1::text[]) AND g.user_id = $2
                ORDER BY g.at DESC, g.id DESC LIMIT 20
                """, [TextArray(["topup", "redeem"]), user]
            ),
            // Statements' balances and the import's opening adjustment (min(at) of an account).
            (
                "ledger_user_month_idx", "SELECT sum(amount) FROM ledger WHERE user_id = $2 AND month <= $1::date",
                ["2026-12-01", user]
            ),
            ("ledger_user_month_idx", "SELECT min(at) FROM ledger WHERE user_id = $1", [user]),
        ]
        for (index, query, parameters) in readers {
            let plan = try await db.pool.transaction { connection in
                try connection.execute("SET LOCAL enable_seqscan = off")
                return try connection.query("EXPLAIN " + query, parameters)
                    .map { try $0.decode(0, as: String.self) }
            }
            #expect(plan.contains { $0.contains(index) }, "\(query)\n\(plan.joined(separator: "\n"))")
        }
    }
}
