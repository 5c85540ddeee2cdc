import Foundation
import TallyCore
import TallyPostgres

/// What an export totals by (`by=user,model` …); rows are sorted by the dimensions in the order given.
public enum ExportDimension: String, Sendable, CaseIterable {
    case user, token, model, group, day

    /// Parses `by`: one or more dimensions, comma-separated, each at most once.
    public static func parseList(_ text: String, allowed: Set<ExportDimension> = Set(allCases)) throws(StoreError)
        -> [ExportDimension]
    {
        var dimensions: [ExportDimension] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let name = part.trimmingCharacters(in: .whitespaces)
            guard let dimension = ExportDimension(rawValue: name), allowed.contains(dimension) else {
                let names = allCases.filter(allowed.contains).map(\.rawValue).joined(separator: ", ")
                throw .invalid("by must list one or more of \(names), comma-separated; got \"\(text)\"")
            }
            guard !dimensions.contains(dimension) else { throw .invalid("by names \(name) twice") }
            dimensions.append(dimension)
        }
        return dimensions
    }
}

/// The two output formats: CSV (RFC 4180 quoting, a header row) and JSON Lines.
public enum ExportFormat: String, Sendable, CaseIterable {
    case csv, jsonl

    public static func parse(_ text: String) throws(StoreError) -> ExportFormat {
        guard let format = ExportFormat(rawValue: text) else {
            throw .invalid("format must be csv or jsonl, got \"\(text)\"")
        }
        return format
    }
}

/// One export: a month's totals by some dimensions, or (`raw`) every request row of the month.
public struct UsageExport: Sendable {
    public var month: UsageMonth
    /// Empty for a raw export.
    public var dimensions: [ExportDimension]
    public var format: ExportFormat
    /// Only this user's usage.
    public var userID: Int64?
    /// An IANA time zone for the day boundaries of `by=day` (the month stays the UTC month).
    public var timeZone: String?

    /// A month's totals. Throws when the combination makes no sense.
    public init(
        month: UsageMonth, by dimensions: [ExportDimension], format: ExportFormat,
        userID: Int64? = nil, timeZone: String? = nil
    ) throws(StoreError) {
        guard !dimensions.isEmpty else { throw .invalid("by must name at least one of user, token, model, group, day") }
        if let timeZone {
            guard dimensions.contains(.day) else {
                throw .invalid("tz shifts the day boundaries of by=day; add day to by")
            }
            guard (1...64).contains(timeZone.utf8.count) else {
                throw .invalid("tz must be an IANA time zone name such as Asia/Shanghai")
            }
        }
        self.month = month
        self.dimensions = dimensions
        self.format = format
        self.userID = userID
        self.timeZone = timeZone == "UTC" ? nil : timeZone
    }

    /// Every request row of the month, as stored, in CSV.
    public static func raw(month: UsageMonth, userID: Int64? = nil) -> UsageExport {
        UsageExport(month: month, userID: userID)
    }

    private init(month: UsageMonth, userID: Int64?) {
        self.month = month
        dimensions = []
        format = .csv
        self.userID = userID
        timeZone = nil
    }

    public var isRaw: Bool { dimensions.isEmpty }

    /// A file name for the export: `usage-2026-10-user-model.csv`, `requests-2026-10.csv`.
    public var fileName: String {
        let stem = isRaw ? "requests-\(month)" : "usage-\(month)-" + dimensions.map(\.rawValue).joined(separator: "-")
        return stem + (userID.map { "-u\($0)" } ?? "") + "." + format.rawValue
    }
}

/// What an export wrote.
public struct ExportSummary: Sendable, Equatable {
    /// Data rows (or JSON lines), without the header.
    public var rows: Int
    public var bytes: Int
}

/// Streams exports with `COPY … TO STDOUT`: PostgreSQL aggregates and formats, Tally passes the
/// bytes on in chunks, so memory stays constant whatever the size of the month.
public struct UsageExporter: Sendable {
    let pool: PostgresPool
    /// Runs between the check that the month is kept and the COPY (tests: retention meanwhile).
    let afterCheck: (@Sendable () throws -> Void)?

    public init(pool: PostgresPool) { self.init(pool: pool, afterCheck: nil) }

    init(pool: PostgresPool, afterCheck: (@Sendable () throws -> Void)?) {
        self.pool = pool
        self.afterCheck = afterCheck
    }

    /// Bytes handed to the sink at once (the last chunk may be smaller).
    public static let chunkSize = 64 * 1024

    /// Runs `export`, handing the output to `sink` in chunks of about `chunkSize` bytes. The sink
    /// runs on a pool thread and may block (that is how a slow reader slows the COPY down); when
    /// it throws, the COPY is cancelled and the error rethrown. Errors in the request (a month
    /// whose request rows are not kept, an unknown time zone) are thrown before any output.
    @discardableResult
    public func export(_ export: UsageExport, to sink: @escaping @Sendable (UnsafeRawBufferPointer) throws -> Void)
        async throws -> ExportSummary
    {
        try await pool.transaction { connection in
            // A month's rollups are ~1M rows: JIT compilation costs more than it saves (~160 ms
            // here), and the default work_mem spills the sort to disk.
            try connection.execute("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'")
            let sql = try Self.statement(for: export, on: connection)
            try afterCheck?()
            var buffer: [UInt8] = []
            buffer.reserveCapacity(Self.chunkSize + 8192)
            var bytes = 0
            let rows = try connection.copyOut(sql) { row in
                buffer.append(contentsOf: row)
                if buffer.count >= Self.chunkSize {
                    bytes += buffer.count
                    try buffer.withUnsafeBytes(sink)
                    buffer.removeAll(keepingCapacity: true)
                }
            }
            if !buffer.isEmpty {
                bytes += buffer.count
                try buffer.withUnsafeBytes(sink)
            }
            return ExportSummary(rows: rows, bytes: bytes)
        }
    }

    /// The COPY statement of an export, after checking what it needs exists. COPY takes no
    /// parameters: every value in it is a validated number, or quoted by libpq.
    static func statement(for export: UsageExport, on connection: PostgresConnection) throws -> String {
        if export.timeZone != nil {
            // Retention could drop the month between the check and the COPY (a review): a zone's
            // export, which reads through request_logs, then came out empty. Its lock on
            // request_logs, taken before the snapshot, makes a detach's second step (which waits
            // for every transaction holding one) come after it; its first step, which marks the
            // month detach-pending without waiting, commits either before the snapshot (the check
            // then answers not kept) or after it, and PostgreSQL plans a repeatable-read
            // transaction's statements with the partitions of its snapshot: in read committed the
            // COPY's fresh snapshot left out the pending month, and the export was empty with 200.
            try connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            try connection.execute("LOCK TABLE ONLY request_logs IN ACCESS SHARE MODE")
        }
        let timeZone = try export.timeZone.map { try checkedTimeZone($0, on: connection) }
        if export.isRaw || timeZone != nil {
            // A raw export locks the month's own table after the check, so that it outlives the
            // drop until the COPY ends, without holding up retention of other months meanwhile.
            let partition = try keptPartition(export.month, on: connection)
            if export.isRaw {
                let table = connection.quoteIdentifier(partition)
                do {
                    try connection.execute("LOCK TABLE \(table) IN ACCESS SHARE MODE")
                } catch {
                    throw error.sqlState == "42P01" ? notKept(export.month) : error
                }
                // A query on Citus too, where COPY of a distributed table counts its header as a row.
                let source =
                    if let userID = export.userID {
                        "(SELECT * FROM \(table) WHERE user_id = \(userID))"
                    } else if try CitusLayout.isInstalled(on: connection) {
                        "(SELECT * FROM \(table))"
                    } else {
                        table
                    }
                return "COPY \(source) TO STDOUT WITH (FORMAT csv, HEADER)"
            }
        }
        let query = RollupQuery(export: export, timeZone: timeZone.map(connection.quoteLiteral))
        return "COPY (\(query.sql)) TO STDOUT WITH (\(query.copyOptions))"
    }

    /// The name of the month's `request_logs` partition; not found when it was dropped by
    /// retention (or never made).
    static func keptPartition(_ month: UsageMonth, on connection: PostgresConnection) throws -> String {
        guard
            let row = try connection.query(
                "SELECT name FROM tally_log_partitions WHERE month = $1::date AND NOT detach_pending",
                [month.firstDay]
            ).first
        else { throw notKept(month) }
        return try row.decode(0)
    }

    static func notKept(_ month: UsageMonth) -> StoreError {
        StoreError.notFound(
            "the request rows of \(month) are not kept (dropped by retention, or never stored); exports by user, token, model, group or UTC day still cover the month"
        )
    }

    /// The zone's canonical name, or `invalid` when PostgreSQL does not know it.
    static func checkedTimeZone(_ name: String, on connection: PostgresConnection) throws -> String {
        guard let row = try connection.query("SELECT name FROM pg_timezone_names WHERE name = $1", [name]).first else {
            throw StoreError.invalid("tz must be an IANA time zone name such as Asia/Shanghai; \"\(name)\" is not one")
        }
        return try row.decode(0)
    }
}

/// The SQL of a rollup export: totals of the usage rollups (`usage_daily` and what is pending
/// for it, migration 0010) (or, for `by=day` in another time zone,
/// of the month's request rows) grouped by the dimensions, joined to names, sorted.
struct RollupQuery {
    let export: UsageExport
    /// A quoted time zone literal, when days are shifted.
    let timeZone: String?

    /// The totals, in column order, from the usage rows `d`. (`sum` of bigint is numeric, so
    /// nothing overflows; USD is units × 0.000002, exact with 6 decimals.)
    static let measures: [(name: String, total: String)] = [
        ("requests", "sum(d.requests)"),
        ("failed_requests", "sum(d.failed_requests)"),
        ("prompt_tokens", "sum(d.prompt_tokens)"),
        ("completion_tokens", "sum(d.completion_tokens)"),
        ("cached_tokens", "sum(d.cached_tokens)"),
        ("cache_write_tokens", "sum(d.cache_write_tokens)"),
        ("audio_input_tokens", "sum(d.audio_input_tokens)"),
        ("audio_output_tokens", "sum(d.audio_output_tokens)"),
        ("images", "sum(d.images)"),
        ("video_seconds", "sum(d.video_seconds)"),
        ("calls", "sum(d.calls)"),
        ("predict_time", "sum(d.predict_time)"),
        ("quota", "sum(d.quota)"),
    ]

    /// Output columns: the dimensions' keys and names, the totals, then USD.
    var columns: [(name: String, value: String)] {
        var columns: [(String, String)] = []
        for dimension in export.dimensions {
            switch dimension {
            case .user: columns += [("user_id", "e.user_id"), ("username", chosenText("u.username"))]
            case .token: columns += [("token_id", "e.token_id"), ("token_name", chosenText("k.name"))]
            case .model: columns.append(("model", "e.model"))
            case .group: columns.append(("group", "e.\"group\""))
            case .day: columns.append(("day", "to_char(e.day, 'YYYY-MM-DD')"))
            }
        }
        columns += Self.measures.map { ($0.name, "e.\($0.name)") }
        columns.append(("usd", export.format == .jsonl ? "(e.quota * 0.000002)::text" : "e.quota * 0.000002"))
        return columns
    }

    /// A name its user chose, as the CSV shows it: one a spreadsheet would read as a formula
    /// (`=`, `+`, `-`, `@`, a tab or a carriage return first) starts with `'`, which spreadsheets
    /// show as text (OWASP's CSV injection advice). JSON Lines carry the name as it is.
    private func chosenText(_ column: String) -> String {
        guard export.format == .csv else { return column }
        return "CASE WHEN left(\(column), 1) IN ('=', '+', '-', '@', E'\\t', E'\\r')"
            + " THEN '''' || \(column) ELSE \(column) END"
    }

    /// The grouping columns of the usage rows.
    var keys: [String] {
        export.dimensions.map { dimension in
            switch dimension {
            case .user: "user_id"
            case .token: "token_id"
            case .model: "model"
            case .group: "\"group\""
            case .day: "day"
            }
        }
    }

    /// Sort order over the output columns; text keys in byte order, so it does not depend on
    /// the database's collation.
    var ordering: String {
        export.dimensions.map { dimension in
            switch dimension {
            case .user: "r.user_id"
            case .token: "r.token_id"
            case .model: "r.model COLLATE \"C\""
            case .group: "r.\"group\" COLLATE \"C\""
            case .day: "r.day COLLATE \"C\""
            }
        }.joined(separator: ", ")
    }

    /// The month's usage rows: the daily rollups, or request rows with days in `timeZone`.
    var usageRows: String {
        let user = export.userID.map { " AND user_id = \($0)" } ?? ""
        let month = export.month
        guard let timeZone else {
            return
                "SELECT * FROM usage_rollups WHERE day >= DATE '\(month.firstDay)' AND day < DATE '\(month.adding(months: 1).firstDay)'\(user)"
        }
        return """
            SELECT (created_at AT TIME ZONE \(timeZone))::date AS day, user_id, token_id, model, "group", kind,
                   1 AS requests, (status >= 400)::int AS failed_requests, prompt_tokens, completion_tokens, cached_tokens,
                   cache_write_tokens, audio_input_tokens, audio_output_tokens, images, video_seconds, calls, predict_time, quota
            FROM request_logs
            WHERE created_at >= TIMESTAMPTZ '\(month.firstDay) 00:00:00+00'
              AND created_at < TIMESTAMPTZ '\(month.adding(months: 1).firstDay) 00:00:00+00'\(user)
            """
    }

    var sql: String {
        let keyList = keys.joined(separator: ", ")
        let totals = Self.measures.map { "\($0.total) AS \($0.name)" }.joined(separator: ", ")
        let named = columns.map { "\($0.value) AS \"\($0.name)\"" }.joined(separator: ", ")
        var joins = ""
        if export.dimensions.contains(.user) { joins += " LEFT JOIN users u ON u.id = e.user_id" }
        if export.dimensions.contains(.token) { joins += " LEFT JOIN tokens k ON k.id = e.token_id" }
        // CSV: the named columns. JSON Lines: each row as a compact object, keys in column order.
        return """
            SELECT \(export.format == .csv ? "r.*" : "row_to_json(r)::text")
            FROM (SELECT \(named) FROM (SELECT \(keyList), \(totals) FROM (\(usageRows)) d GROUP BY \(keyList)) e\(joins)) r
            ORDER BY \(ordering)
            """
    }

    /// JSON Lines come out of CSV mode with control characters as delimiter and quote: JSON text
    /// never holds a raw control character (PostgreSQL escapes them), so every line is written
    /// verbatim, where COPY's text format would double each backslash.
    var copyOptions: String {
        switch export.format {
        case .csv: "FORMAT csv, HEADER"
        case .jsonl: "FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02'"
        }
    }
}
