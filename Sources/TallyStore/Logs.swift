import Foundation
import TallyCore
import TallyPostgres

/// One log row in new-api's shape (`model.Log`): requests from `request_logs` (type 2 consume,
/// 5 error) and balance credits from the `ledger` (1 top-up and redemption, 3 manage
/// adjustment, 6 refund). Charges are not listed from the ledger: their requests are.
public struct LogEntry: Sendable, Equatable {
    /// new-api's display index on the page (offset + position + 1); set by the caller.
    public var id: Int
    public var userID: Int64
    public var createdAt: Int64
    public var type: Int
    public var content: String
    public var username: String
    public var tokenName: String
    public var modelName: String
    public var quota: Int64
    public var promptTokens: Int64
    public var completionTokens: Int64
    /// Whole seconds.
    public var useTime: Int64
    public var isStream: Bool
    public var channel: Int64
    public var channelName: String
    public var tokenID: Int64
    public var group: String
    public var ip: String
    public var requestID: String?
    /// A JSON object as text (new-api keeps `other` as a JSON string).
    public var other: String
    public var tid: String?
}

/// new-api's log `type` numbers ("don't change").
public enum LogType {
    public static let all = 0, topup = 1, consume = 2, manage = 3, system = 4, error = 5, refund = 6, login = 7
}

/// Filters of `GET /api/log/self` (and the admin lookups), all optional.
public struct LogFilter: Sendable, Equatable {
    public var type: Int
    /// Unix seconds, inclusive.
    public var startTimestamp: Int64?
    public var endTimestamp: Int64?
    /// Exact, or a LIKE pattern when it contains `%` (at most two).
    public var modelName: String?
    /// Exact key name.
    public var tokenName: String?
    public var group: String?
    public var requestID: String?
    /// The trace id the request was logged under (admin lookups and `GET /api/log/self?tid=`).
    public var tid: String?
    /// The channel that served the request (new-api's admin filter `channel`).
    public var channel: Int64?

    public init(
        type: Int = 0, startTimestamp: Int64? = nil, endTimestamp: Int64? = nil, modelName: String? = nil,
        tokenName: String? = nil, group: String? = nil, requestID: String? = nil, tid: String? = nil,
        channel: Int64? = nil
    ) {
        self.type = type
        self.startTimestamp = startTimestamp
        self.endTimestamp = endTimestamp
        self.modelName = modelName
        self.tokenName = tokenName
        self.group = group
        self.requestID = requestID
        self.tid = tid
        self.channel = channel
    }

    public func validated() throws(StoreError) -> LogFilter {
        guard (0...7).contains(type) else { throw .invalid("type must be a log type from 0 to 7, got \(type)") }
        if let start = startTimestamp, let end = endTimestamp, start > end {
            throw .invalid("start_timestamp \(start) is after end_timestamp \(end)")
        }
        if let modelName, modelName.filter({ $0 == "%" }).count > 2 {
            throw .invalid("model_name may contain at most 2 '%' wildcards")
        }
        for (field, value) in [
            ("model_name", modelName), ("token_name", tokenName), ("group", group),
            ("request_id", requestID), ("tid", tid),
        ] {
            if let value, value.count > 200 { throw .invalid("\(field) is longer than 200 characters") }
        }
        return self
    }

    /// Filters that only request rows can match (credits have no model, key, group, request id or
    /// channel).
    var excludesCredits: Bool {
        modelName != nil || tokenName != nil || group != nil || requestID != nil || tid != nil || channel != nil
    }
}

/// The `{quota, rpm, tpm}` of `GET /api/log/self/stat`.
public struct LogStat: Sendable, Equatable {
    public var quota: Int64
    public var rpm: Int64
    public var tpm: Int64

    /// Nothing spent: the stat of no rows.
    public static let none = LogStat(quota: 0, rpm: 0, tpm: 0)
}

/// An ingest reject, for the admin lookup by tid or request id.
public struct IngestReject: Sendable, Equatable {
    public var id: Int64
    public var receivedTime: Int64
    public var batchTid: String
    public var line: Int
    public var requestID: String?
    public var code: String
    public var message: String
    public var raw: String
}

/// An audit entry, for the admin lookup by tid.
public struct AuditEntry: Sendable, Equatable {
    public var id: Int64
    public var time: Int64
    public var actorID: Int64?
    public var actor: String
    public var action: String
    public var target: String
    /// JSON text or nil.
    public var before: String?
    public var after: String?
    public var tid: String?
}

/// Reads `request_logs` (filled by ingest) and the ledger's credits as new-api log rows.
public struct LogRepository: Sendable {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    /// Builds `WHERE` clauses with numbered parameters.
    struct Query {
        var parameters: [any PostgresEncodable] = []
        mutating func bind(_ value: any PostgresEncodable) -> String {
            parameters.append(value)
            return "$\(parameters.count)"
        }
    }

    static func requestConditions(userID: Int64?, _ filter: LogFilter, timeFilters: Bool, _ query: inout Query)
        -> [String]
    {
        var conditions: [String] = []
        if let userID { conditions.append("l.user_id = \(query.bind(userID))") }
        switch filter.type {
        case LogType.consume: conditions.append("l.status < 400")
        case LogType.error: conditions.append("l.status >= 400")
        default: break
        }
        if timeFilters {
            if let start = filter.startTimestamp {
                conditions.append("l.created_at >= to_timestamp(\(query.bind(start))::bigint)")
            }
            if let end = filter.endTimestamp {
                conditions.append("l.created_at < to_timestamp(\(query.bind(end))::bigint + 1)")
            }
        }
        if let model = filter.modelName {
            if model.contains("%") {
                let escaped = model.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(
                    of: "_", with: "\\_")
                conditions.append("l.model LIKE \(query.bind(escaped))")
            } else {
                conditions.append("l.model = \(query.bind(model))")
            }
        }
        if let tokenName = filter.tokenName {
            let owner = userID.map { "user_id = \(query.bind($0)) AND " } ?? ""
            conditions.append("l.token_id IN (SELECT id FROM tokens WHERE \(owner)name = \(query.bind(tokenName)))")
        }
        if let group = filter.group { conditions.append("l.\"group\" = \(query.bind(group))") }
        if let requestID = filter.requestID { conditions.append("l.request_id = \(query.bind(requestID))") }
        if let tid = filter.tid { conditions.append("l.tid = \(query.bind(tid))") }
        // Cast: the column is an integer, and an id past its range must match nothing, not fail.
        if let channel = filter.channel { conditions.append("l.channel_id = \(query.bind(channel))::bigint") }
        return conditions
    }

    static func creditConditions(userID: Int64?, _ filter: LogFilter, _ query: inout Query) -> [String]? {
        let kinds: [String]
        switch filter.type {
        case LogType.all: kinds = ["topup", "redeem", "adjust", "refund"]
        case LogType.topup: kinds = ["topup", "redeem"]
        case LogType.manage: kinds = ["adjust"]
        case LogType.refund: kinds = ["refund"]
        default: return nil
        }
        guard !filter.excludesCredits else { return nil }
        // `kind <> 'charge'` as written lets PostgreSQL use the credits-only index (migration 0020).
        var conditions = ["g.kind <> 'charge'", "g.kind = ANY (\(query.bind(TextArray(kinds)))::text[])"]
        if let userID { conditions.append("g.user_id = \(query.bind(userID))") }
        if let start = filter.startTimestamp { conditions.append("g.at >= to_timestamp(\(query.bind(start))::bigint)") }
        if let end = filter.endTimestamp { conditions.append("g.at < to_timestamp(\(query.bind(end))::bigint + 1)") }
        return conditions
    }

    static let requestSelect = """
        SELECT l.created_at AS at, CASE WHEN l.status >= 400 THEN 5 ELSE 2 END AS type, coalesce(l.error, '') AS content,
               l.user_id, u.username, l.token_id, coalesce(t.name, '') AS token_name, l.model, l.quota,
               l.prompt_tokens, l.completion_tokens, l.duration_ms::bigint / 1000 AS use_time, l.is_stream,
               coalesce(l.channel_id, 0)::bigint AS channel, coalesce(c.name, '') AS channel_name, l."group",
               coalesce(l.ip, '') AS ip, l.request_id,
               jsonb_build_object('kind', l.kind, 'status_code', l.status, 'duration_ms', l.duration_ms,
                   'cache_tokens', l.cached_tokens, 'cache_write_tokens', l.cache_write_tokens,
                   'audio_input_tokens', l.audio_input_tokens, 'audio_output_tokens', l.audio_output_tokens,
                   'images', l.images, 'size', l.size, 'quality', l.quality, 'video_seconds', l.video_seconds,
                   'resolution', l.resolution, 'calls', l.calls, 'predict_time', l.predict_time,
                   'price_version_id', l.price_version_id, 'tid', l.tid)::text AS other,
               l.tid, ''::text AS kind, l.request_id AS sort_key
        FROM request_logs l JOIN users u ON u.id = l.user_id
        LEFT JOIN tokens t ON t.user_id = l.user_id AND t.id = l.token_id LEFT JOIN channels c ON c.id = l.channel_id
        """

    /// Same columns and names as `requestSelect` (a credit-only query takes its names from here).
    static let creditSelect = """
        SELECT g.at AS at, CASE g.kind WHEN 'adjust' THEN 3 WHEN 'refund' THEN 6 ELSE 1 END AS type, g.reason AS content,
               g.user_id, u.username, coalesce(g.token_id, 0) AS token_id, coalesce(t.name, '') AS token_name, ''::text AS model,
               g.amount AS quota, 0::bigint AS prompt_tokens, 0::bigint AS completion_tokens, 0::bigint AS use_time,
               false AS is_stream, 0::bigint AS channel, ''::text AS channel_name, ''::text AS "group", ''::text AS ip,
               NULL::text AS request_id,
               jsonb_build_object('ledger_id', g.id, 'kind', g.kind, 'balance_after', g.balance_after, 'tid', g.tid)::text AS other,
               g.tid, g.kind AS kind, '~' || lpad(g.id::text, 20, '0') AS sort_key
        FROM ledger g JOIN users u ON u.id = g.user_id LEFT JOIN tokens t ON t.user_id = g.user_id AND t.id = g.token_id
        """

    /// A page of log rows, newest first. `userID` nil reads every user's (admin lookups);
    /// `channelNames` false blanks `channel_name`, as new-api does for users.
    ///
    /// Three light steps, so a user with millions of rows costs index scans, not a sort of
    /// everything: the count per source; the page's keys, each source limited to offset + size
    /// rows in index order before the merge; then the details of those rows only.
    public func entries(userID: Int64?, filter: LogFilter, page: PageRequest, channelNames: Bool) async throws -> Page<
        LogEntry
    > {
        let filter = try filter.validated()
        var query = Query()
        var requestWhere: String?
        if ![LogType.topup, LogType.manage, LogType.refund, LogType.system, LogType.login].contains(filter.type) {
            let conditions = Self.requestConditions(userID: userID, filter, timeFilters: true, &query)
            requestWhere = conditions.isEmpty ? "TRUE" : conditions.joined(separator: " AND ")
        }
        let creditWhere = Self.creditConditions(userID: userID, filter, &query)?.joined(separator: " AND ")
        guard requestWhere != nil || creditWhere != nil else { return Page(items: [], total: 0, request: page) }
        let countQuery = query
        let counts = [
            requestWhere.map { "(SELECT count(*) FROM request_logs l WHERE \($0))" },
            creditWhere.map { "(SELECT count(*) FROM ledger g WHERE \($0))" },
        ].compactMap { $0 }
        let depth = query.bind(page.offset + page.size)
        var keys: [String] = []
        if let requestWhere {
            keys.append(
                """
                (SELECT l.created_at AS at, l.request_id AS sort_key, l.request_id AS rid, l.user_id AS uid,
                        NULL::bigint AS lid
                 FROM request_logs l WHERE \(requestWhere) ORDER BY l.created_at DESC, l.request_id DESC LIMIT \(depth))
                """)
        }
        if let creditWhere {
            keys.append(
                """
                (SELECT g.at AS at, '~' || lpad(g.id::text, 20, '0') AS sort_key, NULL::text AS rid,
                        NULL::bigint AS uid, g.id AS lid
                 FROM ledger g WHERE \(creditWhere) ORDER BY g.at DESC, g.id DESC LIMIT \(depth))
                """)
        }
        let size = query.bind(page.size), offset = query.bind(page.offset)
        var details: [String] = []
        if requestWhere != nil {
            // The row's whole key: two accounts may log one request id at the same instant.
            details.append(
                Self.requestSelect
                    + " JOIN page p ON p.uid = l.user_id AND p.at = l.created_at AND p.rid = l.request_id")
        }
        if creditWhere != nil { details.append(Self.creditSelect + " JOIN page p ON p.lid = g.id") }
        let pageSQL = """
            WITH page AS MATERIALIZED (
                SELECT * FROM (\(keys.joined(separator: " UNION ALL "))) AS k
                ORDER BY k.at DESC, k.sort_key DESC LIMIT \(size) OFFSET \(offset))
            SELECT \(SQL.unix("e.at")), e.* FROM (\(details.joined(separator: " UNION ALL "))) AS e
            ORDER BY e.at DESC, e.sort_key DESC
            """
        let pageQuery = query
        return try await pool.transaction { connection in
            // One snapshot for the count and the page, so a batch or a credit committing between
            // them cannot make `total` disagree with the rows (a page lost to a client paging by it).
            try CitusLayout.readInOneSnapshot(on: connection)
            let total = try connection.query("SELECT \(counts.joined(separator: " + "))", countQuery.parameters)[0]
                .decode(0, as: Int.self)
            let rows = try connection.query(pageSQL, pageQuery.parameters)
            var items: [LogEntry] = []
            for index in 0..<rows.count {
                let row = rows[index]
                let kind = try row.decode(21, as: String.self)
                let quota = try row.decode(9, as: Int64.self)
                var content = try row.decode(3, as: String.self)
                if !kind.isEmpty { content = Self.creditContent(kind: kind, amount: quota, reason: content) }
                items.append(
                    LogEntry(
                        id: page.offset + index + 1, userID: try row.decode(4), createdAt: try row.decode(0),
                        type: try row.decode(2), content: content, username: try row.decode(5),
                        tokenName: try row.decode(7),
                        modelName: try row.decode(8), quota: quota, promptTokens: try row.decode(10),
                        completionTokens: try row.decode(11), useTime: try row.decode(12), isStream: try row.decode(13),
                        channel: try row.decode(14), channelName: channelNames ? try row.decode(15) : "",
                        tokenID: try row.decode(6), group: try row.decode(16), ip: try row.decode(17),
                        requestID: try row.decodeOptional(18), other: try row.decode(19),
                        tid: try row.decodeOptional(20)))
            }
            return Page(items: items, total: total, request: page)
        }
    }

    /// new-api's stat: the quota the request rows matching the filter spent, and the consume
    /// rows' requests and tokens of the last 60 seconds (time filters do not apply to those two).
    /// The quota counts failed requests too: new-api's cost nothing, Tally charges them where the
    /// price sheet says `charge_failed`, and the stat is what the user spent.
    public func stat(userID: Int64, filter: LogFilter) async throws -> LogStat {
        var filter = try filter.validated()
        filter.type = LogType.all
        var quotaQuery = Query()
        let quotaConditions = Self.requestConditions(userID: userID, filter, timeFilters: true, &quotaQuery)
        filter.type = LogType.consume
        var rateQuery = Query()
        var rateConditions = Self.requestConditions(userID: userID, filter, timeFilters: false, &rateQuery)
        rateConditions.append("l.created_at >= now() - interval '60 seconds'")
        let finalQuota = quotaQuery, finalRate = rateQuery, rateWhere = rateConditions.joined(separator: " AND ")
        return try await pool.transaction { connection in
            try CitusLayout.readInOneSnapshot(on: connection)
            let quota = try connection.query(
                """
                SELECT coalesce(sum(l.quota), 0)::bigint FROM request_logs l WHERE \(quotaConditions.joined(separator: " AND "))
                """, finalQuota.parameters)[0].decode(0, as: Int64.self)
            let rate = try connection.query(
                """
                SELECT count(*), coalesce(sum(l.prompt_tokens + l.completion_tokens), 0)::bigint
                FROM request_logs l WHERE \(rateWhere)
                """, finalRate.parameters)[0]
            return LogStat(quota: quota, rpm: try rate.decode(0), tpm: try rate.decode(1))
        }
    }

    /// The id of the user with this name, or nil (new-api's admin filter `username`).
    public func userID(named username: String) async throws -> Int64? {
        try await pool.withConnection { connection in
            try connection.query("SELECT id FROM users WHERE username = $1", [username]).first?.decode(
                0, as: Int64.self)
        }
    }

    /// Everything recorded under a tid or a request id: request rows, ingest rejects and (by
    /// tid) audit entries.
    public func lookup(tid: String?, requestID: String?) async throws -> (
        logs: [LogEntry], rejects: [IngestReject], audit: [AuditEntry]
    ) {
        guard tid != nil || requestID != nil else { throw StoreError.invalid("give tid or request_id") }
        let logs = try await entries(
            userID: nil, filter: LogFilter(requestID: requestID, tid: tid),
            page: PageRequest(page: 1, size: 1000), channelNames: true
        ).items
        return try await pool.withConnection { connection in
            var query = Query()
            var conditions: [String] = []
            if let tid { conditions.append("batch_tid = \(query.bind(tid))") }
            if let requestID { conditions.append("request_id = \(query.bind(requestID))") }
            let rejects = try connection.query(
                """
                SELECT id, \(SQL.unix("received_at")), batch_tid, line, request_id, code, message, raw FROM ingest_rejects
                WHERE \(conditions.joined(separator: " AND ")) ORDER BY id DESC LIMIT 1000
                """, query.parameters
            ).map { row in
                IngestReject(
                    id: try row.decode(0), receivedTime: try row.decode(1), batchTid: try row.decode(2),
                    line: try row.decode(3), requestID: try row.decodeOptional(4), code: try row.decode(5),
                    message: try row.decode(6), raw: try row.decode(7))
            }
            var audit: [AuditEntry] = []
            if let tid {
                audit = try connection.query(
                    """
                    SELECT id, \(SQL.unix("at")), actor_id, actor, action, target, before::text, after::text, tid
                    FROM audit_log WHERE tid = $1 ORDER BY id DESC LIMIT 1000
                    """, [tid]
                ).map { row in
                    AuditEntry(
                        id: try row.decode(0), time: try row.decode(1), actorID: try row.decodeOptional(2),
                        actor: try row.decode(3), action: try row.decode(4), target: try row.decode(5),
                        before: try row.decodeOptional(6), after: try row.decodeOptional(7),
                        tid: try row.decodeOptional(8))
                }
            }
            return (logs, rejects, audit)
        }
    }

    /// The text of a credit's log row.
    static func creditContent(kind: String, amount: Int64, reason: String) -> String {
        let dollars = Money.formatDollars(units: amount)
        let suffix = reason.isEmpty ? "" : " (\(reason))"
        switch kind {
        case "topup": return "Top-up of \(dollars)\(suffix)"
        case "redeem": return "Redeemed \(dollars) with a redemption code\(suffix)"
        case "refund": return "Refund of \(dollars)\(suffix)"
        default: return "Balance adjusted by \(amount < 0 ? "" : "+")\(dollars)\(suffix)"
        }
    }
}
