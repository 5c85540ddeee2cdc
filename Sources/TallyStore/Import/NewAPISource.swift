import Foundation
import TallyCore
import TallyPostgres

/// A new-api PostgreSQL database, read only: which of new-api's columns it has (they changed
/// over its releases) and the queries that read its rows in the shape Tally's staging tables
/// take. Missing optional columns read as their neutral value.
struct NewAPISource {
    let connection: PostgresConnection
    private let columns: [String: Set<String>]

    /// The tables that hold accounts, and the one that holds logs: new-api can keep its logs in
    /// a database of their own (LOG_SQL_DSN).
    static let accountTables: Set = ["users", "tokens", "channels"]
    static let logTables: Set = ["logs"]

    /// Tables and columns every supported new-api version has.
    private static let required: [String: [String]] = [
        "users": ["id", "username", "role", "status", "quota", "group"],
        "tokens": ["id", "user_id", "key", "status", "remain_quota"],
        "channels": ["id", "name", "status"],
        "logs": ["id", "user_id", "created_at", "type", "quota"],
    ]

    /// Opens the session read-only and UTF-8, and checks that this database has new-api's
    /// `tables`.
    init(connection: PostgresConnection, tables: Set<String>) throws {
        self.connection = connection
        try connection.execute("SET client_encoding TO 'UTF8'; SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        var columns: [String: Set<String>] = [:]
        try connection.query(
            """
            SELECT table_name, column_name FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name = ANY ($1::text[])
            """, [TextArray(["users", "tokens", "channels", "logs", "redemptions", "options"])]
        ).forEach { row in
            columns[try row.decode(0), default: []].insert(try row.decode(1))
        }
        self.columns = columns
        for (table, needed) in Self.required.sorted(by: { $0.key < $1.key }) where tables.contains(table) {
            if table == "logs", columns[table] == nil {
                throw StoreError.invalid(
                    "the database has no new-api logs table; if new-api keeps its logs in another "
                        + "database (LOG_SQL_DSN), name that one with --logs-from")
            }
            let missing = needed.filter { !(columns[table]?.contains($0) ?? false) }
            guard missing.isEmpty else {
                throw StoreError.invalid(
                    "the source is not a new-api database: table \(table) lacks \(missing.joined(separator: ", "))")
            }
        }
    }

    func has(_ table: String) -> Bool { columns[table] != nil }

    /// `"column"` when the table has it, else `fallback` (an SQL literal).
    private func column(_ table: String, _ name: String, or fallback: String) -> String {
        columns[table]?.contains(name) == true ? "\"\(name)\"" : fallback
    }

    // MARK: Queries (column order = the staging table's, see NewAPIImportSQL)

    /// A row without a status is enabled (1 for users, keys, channels and codes alike, in
    /// new-api's numbering, which Tally's statuses keep).
    private var enabled: Int { UserStatus.enabled.sql }

    var users: String {
        """
        SELECT id, coalesce(username, ''), coalesce(\(column("users", "display_name", or: "''")), ''),
               coalesce(\(column("users", "email", or: "''")), ''), coalesce(role, \(Role.user.sql)),
               coalesce(status, \(enabled)),
               coalesce("group", ''), coalesce(quota, 0), coalesce(\(column("users", "used_quota", or: "0")), 0),
               \(column("users", "access_token", or: "NULL::text")), coalesce(\(column("users", "created_at", or: "0")), 0),
               \(column("users", "deleted_at", or: "NULL::timestamptz")) IS NOT NULL
        FROM users ORDER BY id
        """
    }

    var tokens: String {
        """
        SELECT id, coalesce(user_id, 0), coalesce(name, ''), coalesce(key, ''), coalesce(status, \(enabled)),
               coalesce(\(column("tokens", "group", or: "''")), ''),
               coalesce(remain_quota, 0), coalesce(\(column("tokens", "unlimited_quota", or: "false")), false),
               coalesce(\(column("tokens", "model_limits_enabled", or: "false")), false),
               coalesce(\(column("tokens", "model_limits", or: "''")), ''), coalesce(\(column("tokens", "allow_ips", or: "''")), ''),
               coalesce(\(column("tokens", "expired_time", or: "-1")), -1), coalesce(\(column("tokens", "created_time", or: "0")), 0),
               coalesce(\(column("tokens", "accessed_time", or: "0")), 0), \(column("tokens", "deleted_at", or: "NULL::timestamptz"))
        FROM tokens ORDER BY id
        """
    }

    var channels: String {
        """
        SELECT id, coalesce(name, ''), coalesce(status, \(enabled)),
               coalesce(\(column("channels", "group", or: "'default'")), ''),
               coalesce(\(column("channels", "models", or: "''")), ''), coalesce(\(column("channels", "used_quota", or: "0")), 0),
               coalesce(\(column("channels", "created_time", or: "0")), 0)
        FROM channels ORDER BY id
        """
    }

    /// nil when the database has no redemption table.
    var redemptions: String? {
        guard has("redemptions") else { return nil }
        return """
            SELECT id, coalesce(name, ''), coalesce(key, ''), coalesce(quota, 0), coalesce(status, \(enabled)),
                   coalesce(user_id, 0),
                   coalesce(used_user_id, 0), coalesce(\(column("redemptions", "expired_time", or: "0")), 0),
                   coalesce(created_time, 0), coalesce(redeemed_time, 0),
                   \(column("redemptions", "deleted_at", or: "NULL::timestamptz")) IS NOT NULL
            FROM redemptions ORDER BY id
            """
    }

    /// Up to `limit` request logs (consumption and errors) after log id `after`, in id order,
    /// as `COPY … TO STDOUT`. The status code and cache token counts come out of `other` by
    /// pattern, so a row whose `other` is not valid JSON still imports.
    func logsCopy(after: Int64, through last: Int64, limit: Int) -> String {
        let ip = column("logs", "ip", or: "''")
        let other = column("logs", "other", or: "''")
        return """
            COPY (SELECT id, coalesce(user_id, 0), coalesce(created_at, 0), type,
                         CASE WHEN type = 5 THEN left(\(column("logs", "content", or: "''")), 1000) END,
                         coalesce(\(column("logs", "model_name", or: "''")), ''), coalesce(quota, 0),
                         coalesce(\(column("logs", "prompt_tokens", or: "0")), 0), coalesce(\(column("logs", "completion_tokens", or: "0")), 0),
                         coalesce(\(column("logs", "use_time", or: "0")), 0), coalesce(\(column("logs", "is_stream", or: "false")), false),
                         coalesce(\(column("logs", "channel_id", or: "0")), 0), coalesce(\(column("logs", "token_id", or: "0")), 0),
                         coalesce(\(column("logs", "group", or: "''")), ''), coalesce(\(ip), ''),
                         substring(\(other) from '"status_code":\\s*(\\d{3})'),
                         substring(\(other) from '"cache_tokens":\\s*(\\d{1,15})'),
                         substring(\(other) from '"cache_creation_tokens":\\s*(\\d{1,15})')
                  FROM logs WHERE id > \(after) AND id <= \(last) AND type IN (2, 5) ORDER BY id LIMIT \(limit))
                  TO STDOUT
            """
    }

    /// The highest log id: where a run's logs end.
    func lastLogID() throws -> Int64 {
        try connection.query("SELECT coalesce(max(id), 0) FROM logs")[0].decode(0)
    }

    /// Refuses a source whose `QuotaPerUnit` is not new-api's default 500,000 units per USD, the
    /// one Tally counts in: every balance, key quota, code and logged charge would come over
    /// scaled by its ratio to 500,000.
    func checkQuotaPerUnit() throws {
        guard has("options"),
            let value = try connection.query(#"SELECT "value" FROM options WHERE "key" = 'QuotaPerUnit'"#).first?
                .decodeOptional(0, as: String.self)
        else { return }
        guard Double(value.trimmingCharacters(in: .whitespaces)) == 500_000 else {
            throw StoreError.invalid(
                "new-api's QuotaPerUnit is \(value.prefix(40)), not 500000: Tally counts 500,000 units per USD, so every "
                    + "balance, key quota and charge would come over scaled; nothing was imported")
        }
    }

    /// new-api's group options: ratios (`GroupRatio`) and the groups users may pick with their
    /// descriptions (`UserUsableGroups`). Absent options (new-api's defaults were never changed)
    /// read as empty.
    func groupOptions() throws -> (ratios: [String: String], usable: [String: String]) {
        guard has("options") else { return ([:], [:]) }
        var ratios: [String: String] = [:], usable: [String: String] = [:]
        try connection.query(
            #"SELECT "key", coalesce("value", '') FROM options WHERE "key" IN ('GroupRatio', 'UserUsableGroups')"#
        )
        .forEach { row in
            let object =
                (try? JSONSerialization.jsonObject(with: Data(try row.decode(1, as: String.self).utf8)))
                as? [String: Any] ?? [:]
            let values = object.mapValues { "\($0)" }
            if try row.decode(0, as: String.self) == "GroupRatio" { ratios = values } else { usable = values }
        }
        return (ratios, usable)
    }
}
