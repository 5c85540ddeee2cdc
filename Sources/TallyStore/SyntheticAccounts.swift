import TallyCore
import TallyPostgres

/// Creates the synthetic users and keys of `SyntheticKeys` (tests, benchmarks). Set-based:
/// one statement for any number of users.
public enum SyntheticAccounts {
    /// Creates users `synthetic-1…n` (each with `quota` units, a ledger top-up and one key);
    /// existing ones are left as they are (with their lookup rows, AccountLookup). Returns how many
    /// were created.
    @discardableResult
    public static func seed(users count: Int, quota: Int64, group: String = "default", on pool: PostgresPool)
        async throws -> Int
    {
        try await pool.transaction { connection in
            // Seeds run one at a time (tests seeding one database side by side): usernames are
            // unique only through account_lookup now, so the second of two concurrent seeds would
            // insert the same users again and fail on their lookup rows. The statement below takes
            // its snapshot after the lock, so it sees the users the other seed committed.
            try connection.query("SELECT pg_advisory_xact_lock(2047934482)")  // 0x7A110012
            let created = try connection.query(
                """
                WITH fresh AS MATERIALIZED (
                    SELECT 'synthetic-' || i AS username FROM generate_series(1, $1::int) AS i
                    EXCEPT SELECT username FROM users WHERE username LIKE 'synthetic-%'
                ), new_users AS (
                    INSERT INTO users (username, "group", quota)
                    SELECT username, $2, $3 FROM fresh
                    RETURNING id, username, quota
                ), new_tokens AS (
                    INSERT INTO tokens (user_id, name, key_hash, key_last6, unlimited_quota)
                    SELECT id, 'synthetic', sha256(convert_to(
                        'sk-tallysynthetic' || lpad(substr(username, 11), 34, '0'), 'UTF8')),
                        right(lpad(substr(username, 11), 34, '0'), 6), true
                    FROM new_users RETURNING id, user_id, key_hash
                ), lookups AS (
                    INSERT INTO account_lookup (lookup, kind, user_id, token_id)
                    SELECT convert_to(username, 'UTF8'), 'username', id, NULL::bigint FROM new_users
                    UNION ALL SELECT key_hash, 'key', user_id, id FROM new_tokens
                    UNION ALL SELECT int8send(id), 'token', user_id, id FROM new_tokens
                    RETURNING 1
                ), topups AS (
                    INSERT INTO ledger (user_id, kind, amount, reason)
                    SELECT id, 'topup', quota, 'synthetic seed' FROM new_users WHERE quota <> 0 RETURNING 1
                )
                SELECT count(*) FROM new_users
                """, [count, group, quota])
            return try created[0].decode(0, as: Int.self)
        }
    }
}
