import TallyCore
import TallyPostgres

/// The rows of `account_lookup` (migration 0014): each API key, access token and username once
/// across all accounts, with its owner. They are the unique keys that a database sharded by
/// account cannot hold in the account tables themselves, so every change of a key, an access
/// token or a username writes its lookup row in the same transaction.
enum AccountLookup {
    /// A new key: its hash leads to it, and its id to its owner (the lease path on Citus,
    /// migration 0022).
    static func addKey(_ hash: SecretHash, userID: Int64, tokenID: Int64, on connection: PostgresConnection) throws {
        try connection.query(
            """
            INSERT INTO account_lookup (lookup, kind, user_id, token_id)
            VALUES ($1, 'key', $2, $3), (int8send($3), 'token', $2, $3)
            """,
            [hash, userID, tokenID])
    }

    /// Gives `userID` the access token `hash` in place of `replacing` (its previous one, if any).
    static func setAccessToken(
        _ hash: SecretHash, userID: Int64, replacing old: SecretHash?,
        on connection: PostgresConnection
    ) throws {
        if let old {
            try connection.query("DELETE FROM account_lookup WHERE lookup = $1 AND kind = 'access_token'", [old])
        }
        try connection.query(
            "INSERT INTO account_lookup (lookup, kind, user_id) VALUES ($1, 'access_token', $2)", [hash, userID])
    }

    /// Claims `username` for `userID` (releasing `replacing`, its previous name); a name another
    /// account holds is a conflict.
    static func claimUsername(
        _ username: String, userID: Int64, replacing old: String? = nil,
        on connection: PostgresConnection
    ) throws {
        if let old {
            try connection.query(
                "DELETE FROM account_lookup WHERE lookup = convert_to($1, 'UTF8') AND kind = 'username'", [old])
        }
        let claimed = try connection.query(
            """
            INSERT INTO account_lookup (lookup, kind, user_id) VALUES (convert_to($1, 'UTF8'), 'username', $2)
            ON CONFLICT (lookup, kind) DO NOTHING
            """, [username, userID])
        guard claimed.affectedRows == 1 else { throw StoreError.conflict("username \"\(username)\" is taken") }
    }
}

/// Cache invalidations for every Tally instance (`LISTEN tally_changes`), sent by the code that
/// changes what authorize caches, on the connection of its transaction, so they go out at commit
/// (on Citus a trigger would fire on a worker, where no instance listens).
extension ChangeNotice {
    static func send(_ notices: [ChangeNotice], on connection: PostgresConnection) throws {
        guard !notices.isEmpty else { return }
        try connection.query(
            "SELECT pg_notify('tally_changes', p) FROM unnest($1::text[]) AS p",
            [PostgresArray.text(notices.map(\.payload))])
    }
}
