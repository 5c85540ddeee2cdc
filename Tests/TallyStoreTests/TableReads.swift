import TallyPostgres

/// What statements read from one table: its sequential scans and the rows they and index scans
/// fetched, from the backend's own counters (`pg_stat_xact_user_tables`).
struct TableReads: CustomStringConvertible {
    let table: String
    let sequentialScans: Int64
    let rows: Int64

    var description: String { "\(table): \(sequentialScans) sequential scans, \(rows) rows read" }
}

extension PostgresConnection {
    /// Runs `body` in a transaction that is rolled back, and returns its result with what it read
    /// from each of `tables`. The counters hold everything since the backend last published its
    /// statistics, which it never does inside a transaction: the difference between a reading
    /// before and one after, in the same transaction, is the body's alone.
    func reads<T>(of tables: [String], during body: () throws -> T) throws -> (result: T, reads: [TableReads]) {
        func counters() throws -> [String: (scans: Int64, rows: Int64)] {
            var counters: [String: (scans: Int64, rows: Int64)] = [:]
            try query(
                """
                SELECT relname, seq_scan, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
                FROM pg_stat_xact_user_tables WHERE relname = ANY ($1::text[])
                """, [PostgresArray.text(tables)]
            ).forEach { counters[try $0.decode(0)] = (try $0.decode(1), try $0.decode(2)) }
            return counters
        }
        try execute("BEGIN")
        do {
            let before = try counters()
            let result = try body()
            let after = try counters()
            try execute("ROLLBACK")
            let reads = tables.map { table in
                let (start, end) = (before[table] ?? (0, 0), after[table] ?? (0, 0))
                return TableReads(table: table, sequentialScans: end.scans - start.scans, rows: end.rows - start.rows)
            }
            return (result, reads)
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }
}
