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
        if let old { try release("$1", "access_token", old, userID: userID, on: connection) }
        try connection.query(
            "INSERT INTO account_lookup (lookup, kind, user_id) VALUES ($1, 'access_token', $2)", [hash, userID])
    }

    /// Deletes the lookup row `lookup` (an SQL expression of `$1`) of the user's previous token
    /// or name, which the caller read under the user's row lock. On Citus that row may be a
    /// concurrent change's insert, committed on the user's node (whose lock the caller waited
    /// for) and not yet on the lookup's, so a DELETE does not see it and it stays for good (a
    /// flaky AccountLookupTests.concurrentRotations on Citus). An insert of the same row waits
    /// for that transaction to end; the DELETE after it then sees the row.
    private static func release(
        _ lookup: String, _ kind: String, _ value: any PostgresEncodable, userID: Int64,
        on connection: PostgresConnection
    ) throws {
        try connection.query(
            "INSERT INTO account_lookup (lookup, kind, user_id) VALUES (\(lookup), '\(kind)', $2) "
                + "ON CONFLICT (lookup, kind) DO NOTHING", [value, userID])
        try connection.query("DELETE FROM account_lookup WHERE lookup = \(lookup) AND kind = '\(kind)'", [value])
    }

    /// Claims `username` for `userID` (releasing `replacing`, its previous name); a name another
    /// account holds is a conflict.
    static func claimUsername(
        _ username: String, userID: Int64, replacing old: String? = nil,
        on connection: PostgresConnection
    ) throws {
        if let old { try release("convert_to($1, 'UTF8')", "username", old, userID: userID, on: connection) }
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
