import Foundation
import TallyCore
import Synchronization
import TallyPostgres

/// Stores priced batches exactly once per request id.
public protocol IngestRepository: Sendable {
    /// Stores one batch in one transaction and returns only after COMMIT.
    func store(_ lines: [PricedLine], rejects: [RejectedLine], totalLines: Int, tid: String, source: String) async throws -> IngestResult
}

/// The batch pipeline of DESIGN §4 in one transaction:
/// COPY into a per-connection staging table → insert new rows into `request_logs`
/// (`ON CONFLICT DO NOTHING`, the new rows kept) → settle holds (their reservations returned)
/// → debit users and tokens
/// (rows locked in id order, so concurrent batches cannot deadlock) → ledger → `usage_daily`.
public struct PostgresIngestRepository: IngestRepository {
    let pool: PostgresPool
    private let partitions: PartitionCache

    public init(pool: PostgresPool) {
        self.pool = pool
        partitions = PartitionCache()
    }

    public func store(_ lines: [PricedLine], rejects: [RejectedLine], totalLines: Int, tid: String, source: String) async throws -> IngestResult {
        try await ensurePartitions(for: lines)
        return try await pool.transaction { connection in
            let batchID = try connection.query(Self.insertBatch, [tid, source, totalLines, rejects.count])[0].decode(0, as: Int64.self)
            var accepted = 0
            var charged: Int64 = 0
            var providerRateLimited = 0
            if !lines.isEmpty {
                try connection.execute(Self.createStaging)
                let (fresh, rows) = try Self.insertNew(lines, batchID: batchID, on: connection)
                accepted = fresh.count
                charged = fresh.reduce(0) { $0 + $1.quota }
                providerRateLimited = fresh.count { $0.error?.contains(CatalogEntry.providerRateLimited.rawValue) == true }
                if !fresh.isEmpty {
                    try connection.copyIn("COPY ingest_new (\(Self.stagingColumns)) FROM STDIN") { try $0.write(rows) }
                    try connection.query(Self.settleHolds)
                    // Ledger and rollups first: they need no account lock, and every moment an
                    // account row stays locked, authorize batches for it wait.
                    try connection.query(Self.appendLedger, [batchID, tid])
                    try connection.query(Self.upsertUsageDaily)
                    try connection.query(Self.lockUsers)
                    try connection.query(Self.debitUsers)
                    try connection.query(Self.unreserveUsers)
                    try connection.query(Self.lockTokens)
                    try connection.query(Self.debitTokens)
                    try connection.query(Self.unreserveTokens)
                    try connection.query(Self.notifyOverdrawn)
                    try connection.query(WebhookOutbox.enqueueBalanceCrossings, [batchID, tid])
                }
            }
            if !rejects.isEmpty { try Self.storeRejects(rejects, tid: tid, on: connection) }
            try connection.query(Self.finishBatch, [batchID, accepted, lines.count - accepted])
            return IngestResult(batchID: batchID, accepted: accepted, duplicates: lines.count - accepted,
                                rejected: rejects, chargedQuota: charged, providerRateLimited: providerRateLimited)
        }
    }

    /// Inserts the lines whose (request_id, created_at) is not stored yet; returns them and
    /// their COPY rows.
    ///
    /// Optimistic: most batches hold only new ids, so the rows are COPYed straight into
    /// `request_logs` (each written once, like a raw COPY). When any id is already stored (a
    /// resent batch, or a concurrent batch that won a race) the COPY fails with a unique
    /// violation; the savepoint undoes it and the rows go through the staging table with
    /// `ON CONFLICT DO NOTHING`, which keeps exactly the new ones.
    static func insertNew(_ lines: [PricedLine], batchID: Int64, on connection: PostgresConnection) throws -> ([PricedLine], [UInt8]) {
        var seen = Set<LineKey>(minimumCapacity: lines.count)
        // Inserted in one global order (request id, then time): concurrent batches holding the
        // same ids (a resend through another instance) then wait for each other on the first
        // shared id instead of each holding one the other waits for (a deadlock).
        let candidates = lines.filter { seen.insert(LineKey($0)).inserted }
            .sorted { $0.requestID != $1.requestID ? $0.requestID < $1.requestID : $0.createdAt < $1.createdAt }
        let rows = copyRows(candidates, batchID: batchID)
        try connection.execute("SAVEPOINT ingest_fast_path")
        do {
            try connection.copyIn("COPY request_logs (\(stagingColumns)) FROM STDIN") { try $0.write(rows) }
            try connection.execute("RELEASE SAVEPOINT ingest_fast_path")
            return (candidates, rows)
        } catch let error as PostgresError where error.isUniqueViolation {
            try connection.execute("ROLLBACK TO SAVEPOINT ingest_fast_path")
        }
        try connection.copyIn("COPY ingest_staging (\(stagingColumns)) FROM STDIN") { try $0.write(rows) }
        let inserted = Set(try connection.query(insertFromStaging).map { LineKey(requestID: try $0.decode(0), micros: try $0.decode(1)) })
        let kept = candidates.filter { inserted.contains(LineKey($0)) }
        return (kept, copyRows(kept, batchID: batchID))
    }

    static func copyRows(_ lines: [PricedLine], batchID: Int64) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(lines.count * 360)
        var row = CopyRow()
        for line in lines {
            row.reset()
            appendCopyRow(line, batchID: batchID, to: &row)
            bytes.append(contentsOf: row.bytes)
        }
        return bytes
    }

    /// Creates the month partitions a batch needs (outside the batch transaction: DDL takes a
    /// strong lock on the parent, and concurrent batches must not queue behind it).
    private func ensurePartitions(for lines: [PricedLine]) async throws {
        let months = Set(lines.map { PartitionCache.monthStart($0.createdAt) })
        let missing = months.filter { !partitions.contains($0) }
        guard !missing.isEmpty else { return }
        try await pool.withConnection { connection in
            for month in missing {
                try connection.query("SELECT tally_create_log_partitions($1, 1)", [month])
            }
        }
        partitions.insert(missing)
    }

    // MARK: SQL

    static let insertBatch = PreparedStatement("ingest_insert_batch", """
        INSERT INTO ingest_batches (tid, source, lines, accepted, duplicates, rejected)
        VALUES ($1, $2, $3, 0, 0, $4) RETURNING id
        """)

    static let finishBatch = PreparedStatement("ingest_finish_batch",
        "UPDATE ingest_batches SET accepted = $2, duplicates = $3 WHERE id = $1")

    /// Column order of `ingest_staging`, matched by `appendCopyRow`.
    static let stagingColumns = """
        request_id, created_at, user_id, token_id, channel_id, model, "group", kind, status, is_stream,
        duration_ms, ip, tid, error, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens,
        audio_input_tokens, audio_output_tokens, images, size, quality, video_seconds, resolution, calls,
        predict_time, quota, price_version_id, batch_id
        """

    /// Per-connection temporary tables, emptied at every commit.
    static let createStaging = """
        CREATE TEMP TABLE IF NOT EXISTS ingest_staging
            (LIKE request_logs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
        CREATE TEMP TABLE IF NOT EXISTS ingest_new
            (LIKE request_logs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
        CREATE TEMP TABLE IF NOT EXISTS ingest_settled
            (user_id bigint, token_id bigint, amount bigint, token_reserved boolean) ON COMMIT DELETE ROWS;
        """

    /// The slow path: insert only what is not stored yet.
    static let insertFromStaging = PreparedStatement("ingest_insert_from_staging", """
        INSERT INTO request_logs (\(stagingColumns))
        SELECT \(stagingColumns) FROM ingest_staging
        ON CONFLICT (request_id, created_at) DO NOTHING
        RETURNING request_id, (extract(epoch FROM created_at) * 1000000)::bigint
        """)

    /// A stored line settles the open hold of its request id: the line's real cost is debited
    /// like any other line's, and the hold's reservation is returned (`unreserveUsers`/`Tokens`).
    static let settleHolds = PreparedStatement("ingest_settle_holds", """
        WITH settled AS (
            UPDATE holds h SET status = 'settled', closed_at = now()
            FROM ingest_new n WHERE h.request_id = n.request_id AND h.status = 'held'
            RETURNING h.user_id, h.token_id, h.amount, h.token_reserved)
        INSERT INTO ingest_settled SELECT * FROM settled
        """)

    static let lockUsers = PreparedStatement("ingest_lock_users", """
        SELECT 1 FROM users WHERE id IN (SELECT user_id FROM ingest_new UNION SELECT user_id FROM ingest_settled)
        ORDER BY id FOR NO KEY UPDATE
        """)

    static let unreserveUsers = PreparedStatement("ingest_unreserve_users", """
        UPDATE users u SET reserved = u.reserved - s.amount
        FROM (SELECT user_id, sum(amount) AS amount FROM ingest_settled GROUP BY user_id) s
        WHERE u.id = s.user_id
        """)

    static let unreserveTokens = PreparedStatement("ingest_unreserve_tokens", """
        UPDATE tokens k SET reserved = k.reserved - s.amount
        FROM (SELECT token_id, sum(amount) AS amount FROM ingest_settled WHERE token_reserved GROUP BY token_id) s
        WHERE k.id = s.token_id
        """)

    /// Accounts a settlement left with less than they have reserved (an overrun): every
    /// instance gives back its leases of them (`overdrawn:user:<id>`, `overdrawn:token:<id>`
    /// on tally_changes, sent at commit), so nothing more is cut from them until a top-up.
    static let notifyOverdrawn = PreparedStatement("ingest_notify_overdrawn", """
        SELECT pg_notify('tally_changes', 'overdrawn:user:' || u.id) FROM users u
        WHERE u.id IN (SELECT user_id FROM ingest_new) AND u.quota < u.reserved
        UNION ALL
        SELECT pg_notify('tally_changes', 'overdrawn:token:' || k.id) FROM tokens k
        WHERE k.id IN (SELECT token_id FROM ingest_new) AND NOT k.unlimited_quota AND k.remain_quota < k.reserved
        """)

    static let debitUsers = PreparedStatement("ingest_debit_users", """
        UPDATE users u SET quota = u.quota - t.quota, used_quota = u.used_quota + t.quota,
                           request_count = u.request_count + t.requests, updated_at = now()
        FROM (SELECT user_id, sum(quota) AS quota, count(*) AS requests FROM ingest_new GROUP BY user_id) t
        WHERE u.id = t.user_id
        """)

    static let lockTokens = PreparedStatement("ingest_lock_tokens", """
        SELECT 1 FROM tokens
        WHERE id IN (SELECT token_id FROM ingest_new UNION SELECT token_id FROM ingest_settled WHERE token_reserved)
        ORDER BY id FOR NO KEY UPDATE
        """)

    /// Unlimited tokens keep their remain_quota; every token counts its use.
    static let debitTokens = PreparedStatement("ingest_debit_tokens", """
        UPDATE tokens k SET remain_quota = k.remain_quota - CASE WHEN k.unlimited_quota THEN 0 ELSE t.quota END,
                            used_quota = k.used_quota + t.quota, request_count = k.request_count + t.requests,
                            accessed_at = greatest(k.accessed_at, t.last_at)
        FROM (SELECT token_id, sum(quota) AS quota, count(*) AS requests, max(created_at) AS last_at
              FROM ingest_new GROUP BY token_id) t
        WHERE k.id = t.token_id
        """)

    /// One charge row per (batch, user, token, UTC month of the requests' created_at), so each
    /// counts in the month of its requests (docs/exports.md); request_logs.batch_id leads back to it.
    static let appendLedger = PreparedStatement("ingest_append_ledger", """
        INSERT INTO ledger (user_id, token_id, kind, amount, requests, batch_id, tid, usage_month)
        SELECT user_id, token_id, 'charge', -sum(quota), count(*), $1, $2,
               date_trunc('month', created_at AT TIME ZONE 'UTC')::date
        FROM ingest_new GROUP BY user_id, token_id, 8 HAVING sum(quota) <> 0
        ORDER BY user_id, token_id, 8
        """)

    /// Rows are upserted in key order so concurrent batches lock shared rows in the same order.
    static let upsertUsageDaily = PreparedStatement("ingest_upsert_usage_daily", """
        INSERT INTO usage_daily AS d (day, user_id, token_id, model, "group", kind, requests, failed_requests,
            prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, audio_input_tokens,
            audio_output_tokens, images, video_seconds, calls, predict_time, quota)
        SELECT (created_at AT TIME ZONE 'UTC')::date AS day, user_id, token_id, model, "group", kind, count(*),
            count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
            sum(cache_write_tokens), sum(audio_input_tokens), sum(audio_output_tokens), sum(images),
            sum(video_seconds), sum(calls), sum(predict_time), sum(quota)
        FROM ingest_new
        GROUP BY 1, user_id, token_id, model, "group", kind
        ORDER BY 1, user_id, token_id, model, "group", kind
        ON CONFLICT (day, user_id, token_id, model, "group", kind) DO UPDATE SET
            requests = d.requests + EXCLUDED.requests,
            failed_requests = d.failed_requests + EXCLUDED.failed_requests,
            prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
            cached_tokens = d.cached_tokens + EXCLUDED.cached_tokens,
            cache_write_tokens = d.cache_write_tokens + EXCLUDED.cache_write_tokens,
            audio_input_tokens = d.audio_input_tokens + EXCLUDED.audio_input_tokens,
            audio_output_tokens = d.audio_output_tokens + EXCLUDED.audio_output_tokens,
            images = d.images + EXCLUDED.images,
            video_seconds = d.video_seconds + EXCLUDED.video_seconds,
            calls = d.calls + EXCLUDED.calls,
            predict_time = d.predict_time + EXCLUDED.predict_time,
            quota = d.quota + EXCLUDED.quota
        """)

    static func storeRejects(_ rejects: [RejectedLine], tid: String, on connection: PostgresConnection) throws {
        try connection.copyIn("COPY ingest_rejects (batch_tid, line, request_id, code, message, raw) FROM STDIN") { writer in
            var row = CopyRow()
            for reject in rejects {
                row.reset()
                row.append(tid)
                row.append(Int64(reject.line))
                row.append(reject.requestID)
                row.append(reject.code)
                row.append(reject.message)
                row.append(reject.raw)
                row.endRow()
                try writer.write(row.bytes)
            }
        }
    }

    /// One line of COPY text in `stagingColumns` order.
    static func appendCopyRow(_ line: PricedLine, batchID: Int64, to row: inout CopyRow) {
        let usage = line.usage
        row.append(line.requestID)
        row.append(line.createdAt)
        row.append(line.userID)
        row.append(line.tokenID)
        row.append(line.channelID)
        row.append(line.model)
        row.append(line.group)
        row.append(line.kind.rawValue)
        row.append(Int64(line.status))
        row.append(line.isStream)
        row.append(line.durationMs)
        row.append(line.ip)
        row.append(line.tid)
        row.append(line.error)
        row.append(usage.promptTokens)
        row.append(usage.completionTokens)
        row.append(usage.cachedTokens)
        row.append(usage.cacheWriteTokens)
        row.append(usage.audioInputTokens)
        row.append(usage.audioOutputTokens)
        row.append(usage.images)
        row.append(usage.size)
        row.append(usage.quality)
        row.append(usage.videoSeconds.isZero ? "0" : usage.videoSeconds.description)
        row.append(usage.resolution)
        row.append(usage.calls)
        row.append(usage.predictTime.isZero ? "0" : usage.predictTime.description)
        row.append(line.quota)
        row.append(line.priceVersionID)
        row.append(batchID)
        row.endRow()
    }
}

/// A stored row's identity: its request id and `created_at` in microseconds.
struct LineKey: Hashable {
    let requestID: String
    let micros: Int64

    init(requestID: String, micros: Int64) {
        self.requestID = requestID
        self.micros = micros
    }

    init(_ line: PricedLine) {
        requestID = line.requestID
        micros = Int64((line.createdAt.timeIntervalSince1970 * 1_000_000).rounded())
    }
}

/// Months whose `request_logs` partition is known to exist in this process.
final class PartitionCache: Sendable {
    private let months = Mutex<Set<Date>>([])

    func contains(_ month: Date) -> Bool { months.withLock { $0.contains(month) } }
    func insert(_ more: Set<Date>) { months.withLock { $0.formUnion(more) } }

    /// The first instant of the UTC month containing `date`.
    static func monthStart(_ date: Date) -> Date {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar.date(from: calendar.dateComponents([.year, .month], from: date))!
    }
}
