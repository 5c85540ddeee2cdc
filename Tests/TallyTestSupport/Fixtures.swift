import Foundation
import TallyCore
import TallyPostgres
import TallyStore

/// The price sheet of DESIGN §3, the one the issue's golden examples use.
public let designPriceSheet = """
    effective_from: 2026-01-01T00:00:00Z
    groups:
      default: {ratio: "1", description: "Standard"}
      vip:     {ratio: "0.8"}
      svip:    {ratio: "0.6", models: [gpt-4o, claude-sonnet-4]}
    models:
      gpt-4o: {input: "2.50", output: "10.00", cached_input: "1.25", audio_input: "40.00", audio_output: "80.00"}
      gemini-2.5-pro:
        input: "1.25"
        output: "10.00"
        tiers:
          - {above_prompt_tokens: 200000, input: "2.50", output: "15.00"}
      claude-sonnet-4:
        input: "3.00"
        output: "15.00"
        cached_input: "0.30"
        cache_write: "3.75"
        group_prices:
          svip: {input: "2.00", output: "10.00"}
      dall-e-3:
        per_image: {"1024x1024/standard": "0.04", "1024x1792/hd": "0.12", default: "0.04"}
      veo-3:
        per_video_second: {"720p": "0.40", "1080p": "0.50"}
      suno-v4:
        per_call: "0.10"
      replicate/flux-schnell:
        per_compute_second: "0.001"
        per_image: {default: "0.003"}
    """

extension TestDatabase {
    /// The user and key of synthetic account `number` (`synthetic-<number>`, from `prepareBilling`).
    public func syntheticAccount(_ number: Int) async throws -> (user: Int64, token: Int64) {
        try await pool.withConnection { connection in
            let row = try connection.query(
                "SELECT u.id, t.id FROM users u JOIN tokens t ON t.user_id = u.id WHERE u.username = $1",
                ["synthetic-\(number)"])[0]
            return (try row.decode(0, as: Int64.self), try row.decode(1, as: Int64.self))
        }
    }

    /// Loads `designPriceSheet` (once per database) and seeds `users` synthetic accounts.
    public func prepareBilling(users: Int, quota: Int64 = 1_000_000_000) async throws {
        let existing = try await PostgresPriceRepository(pool: pool).newestID()
        if existing == nil {
            _ = try await PostgresPriceRepository(pool: pool).load(
                try PriceSheet.parse(designPriceSheet), effectiveFrom: nil, source: "test", by: .cli)
        }
        try await SyntheticAccounts.seed(users: users, quota: quota, on: pool)
    }

    /// Folds every pending charge into balances and rollups now (what the settler does in
    /// ticks), for tests that read the folded columns themselves.
    public func fold() async throws {
        try await Settler(pool: pool).foldAll()
    }

    /// A single integer from a query. NULL is not 0: a NULL (or no row) throws, so a query
    /// that finds nothing cannot pass for one that sums to zero. `optionalScalar` reads NULL.
    public func scalar(_ sql: String, _ parameters: [any PostgresEncodable] = []) async throws -> Int64 {
        guard let value = try await optionalScalar(sql, parameters) else {
            throw TestClusterError(message: "NULL where a number was expected: \(sql)")
        }
        return value
    }

    /// The query of a backend of this database that waits for a lock held by backend `blocker`
    /// (a row, or the transaction of an uncommitted row a unique index must wait for), once one
    /// does; nil when none does within `timeout`. Race tests use it to know that the racing
    /// transaction really reached the contested point before they release it. The poll's own
    /// backend is left out: CI once found the poll itself listed as waiting on the racer.
    public func queryBlocked(by blocker: Int64, timeout: Duration = .seconds(60)) async throws -> String? {
        var query: String?
        // On Citus the wait happens on the worker that holds the row: citus_lock_waits gathers the
        // waits of every node by global pid (the node id × 10¹⁰ + the pid; the coordinator's is 1).
        let sql =
            TestCluster.isCitus
            ? """
            SELECT blocked_statement FROM citus_lock_waits WHERE blocking_gpid = 10000000000 + $1::bigint
            """
            : """
            SELECT query FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND $1::int = ANY(pg_blocking_pids(pid))
            """
        _ = try await waitUntil(timeout: timeout) {
            query = try await pool.withConnection { connection in
                try connection.query(sql, [blocker]).first?.decode(0, as: String.self)
            }
            return query != nil
        }
        return query
    }

    /// A single integer or NULL from a query; no row at all throws.
    public func optionalScalar(_ sql: String, _ parameters: [any PostgresEncodable] = []) async throws -> Int64? {
        try await pool.withConnection { connection in
            guard let row = try connection.query(sql, parameters).first else {
                throw TestClusterError(message: "no row where a number was expected: \(sql)")
            }
            return try row.decodeOptional(0, as: Int64.self)
        }
    }
}

/// Builds gateway log lines for tests.
public enum LogLines {
    public static func chat(
        _ requestID: String, user: Int = 1, model: String = "gpt-4o", prompt: Int = 1000,
        completion: Int = 500, at: String = "2026-11-10T12:00:00Z", status: Int = 200, group: String? = nil
    ) -> String {
        let groupField = group.map { #","group":"\#($0)""# } ?? ""
        return
            #"{"request_id":"\#(requestID)","created_at":"\#(at)","key":"\#(SyntheticKeys.key(forUser: user))","model":"\#(model)","kind":"chat","status":\#(status)\#(groupField),"usage":{"prompt_tokens":\#(prompt),"completion_tokens":\#(completion)}}"#
    }

    public static func ndjson(_ lines: [String]) -> String { lines.joined(separator: "\n") + "\n" }
}
