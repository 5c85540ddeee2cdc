import TallyPostgres

/// Where each table lives on a Citus cluster (docs/scaling.md): the account tables distributed by
/// the account and co-located, so that everything one account's request touches is on one shard;
/// the catalogue as reference tables, a copy on every node; `account_lookup` distributed by the
/// looked-up value. Tables not named here stay on the coordinator (audit log, ingest batches and
/// rejects, import bookkeeping, the webhook outbox, the lease tables of instances and `holds`,
/// which the authorize path's SQL functions still read across accounts).
public enum CitusLayout {
    /// Small, read on every request, written by admins (and instance registrations).
    static let referenceTables = [
        "groups", "channels", "price_versions", "tally_instances", "webhook_settings",
        "redemptions",
    ]

    /// Distributed by the account, co-located with `users`, in an order in which every foreign key
    /// points at a table already distributed. `pending_charges` (what batches owe balances, migration
    /// 0010) lives with the rows the fold applies it to and the readers add it to; a batch's request
    /// rows, ledger charges and pending usage with their account (migration 0019), so that its work
    /// per account, a user's export and the roll-up into `usage_daily` stay on one shard.
    static let accountTables: [(table: String, column: String)] = [
        ("users", "id"), ("tokens", "user_id"), ("user_leases", "user_id"), ("pending_charges", "user_id"),
        ("request_logs", "user_id"), ("ledger", "user_id"), ("usage_daily", "user_id"), ("pending_usage", "user_id"),
    ]

    /// Distributed by their own key, each in its own co-location group.
    static let lookupTables: [(table: String, column: String)] = [("account_lookup", "lookup")]

    /// Citus refuses to write a reference table that distributed tables point at (groups) after the
    /// same transaction read those tables over several connections per node; this makes it use one
    /// connection per node. On plain PostgreSQL the setting is an unused placeholder.
    static func readAllShardsBeforeWritingReferenceTables(on connection: PostgresConnection) throws {
        try connection.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
    }

    /// Makes the transaction's reads use one connection per worker, so that a repeatable-read
    /// transaction reads each worker in one snapshot: an account's rows (all on one worker) then
    /// agree with each other whatever commits meanwhile. By default Citus may read a worker's
    /// shards over several connections, each a snapshot of its own. A placeholder on plain PostgreSQL.
    static func readEachWorkerInOneSnapshot(on connection: PostgresConnection) throws {
        try connection.execute("SET LOCAL citus.max_adaptive_executor_pool_size TO 1")
    }

    /// Makes the open transaction read everything in one snapshot: repeatable read, read only,
    /// and on Citus each worker over one connection (``readEachWorkerInOneSnapshot(on:)``).
    static func readInOneSnapshot(on connection: PostgresConnection) throws {
        try connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try readEachWorkerInOneSnapshot(on: connection)
    }

    /// Whether the database has the citus extension (then ``distribute(on:)`` applies).
    public static func isInstalled(on connection: PostgresConnection) throws -> Bool {
        try !connection.query("SELECT 1 FROM pg_extension WHERE extname = 'citus'").isEmpty
    }

    /// Distributes every table of the layout that is still a plain table, in one transaction;
    /// returns their names. Idempotent, so every `migrate` may run it after the migrations.
    @discardableResult
    public static func distribute(on connection: PostgresConnection) throws -> [String] {
        try connection.transaction { connection in
            try readAllShardsBeforeWritingReferenceTables(on: connection)
            let placed = Set(
                try connection.query("SELECT logicalrelid::regclass::text FROM pg_dist_partition")
                    .map { try $0.decode(0, as: String.self) })
            let tables = (referenceTables + accountTables.map(\.table) + lookupTables.map(\.table))
                .filter { !placed.contains($0) }
            guard !tables.isEmpty else { return [] }
            // Citus refuses to distribute a table that a foreign key ties to a plain one: the keys of
            // the tables that move are dropped, and made again once every table has moved.
            let keys = try foreignKeys(touching: tables, on: connection)
            for key in keys {
                try connection.execute(
                    "ALTER TABLE \(connection.quoteIdentifier(key.table)) "
                        + "DROP CONSTRAINT \(connection.quoteIdentifier(key.name))")
            }
            for table in referenceTables where tables.contains(table) {
                try connection.query("SELECT create_reference_table($1)", [table])
            }
            for (table, column) in accountTables where tables.contains(table) {
                let colocation = table == "users" ? "default" : "users"
                try connection.query(
                    "SELECT create_distributed_table($1, $2, colocate_with => $3)",
                    [table, column, colocation])
            }
            for (table, column) in lookupTables where tables.contains(table) {
                try connection.query(
                    "SELECT create_distributed_table($1, $2, colocate_with => 'none')",
                    [table, column])
            }
            for key in keys {
                try connection.execute(
                    "ALTER TABLE \(connection.quoteIdentifier(key.table)) "
                        + "ADD CONSTRAINT \(connection.quoteIdentifier(key.name)) \(key.definition)")
            }
            return tables
        }
    }

    private static func foreignKeys(touching tables: [String], on connection: PostgresConnection) throws
        -> [(table: String, name: String, definition: String)]
    {
        try connection.query(
            """
            SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
            WHERE contype = 'f'
              AND (conrelid::regclass::text = ANY ($1::text[]) OR confrelid::regclass::text = ANY ($1::text[]))
            ORDER BY conrelid::regclass::text, conname
            """, [TextArray(tables)]
        ).map { (try $0.decode(0), try $0.decode(1), try $0.decode(2)) }
    }
}
