import Foundation
import Synchronization
import TallyCore
import TallyPostgres

/// Stores priced batches exactly once per request id.
public protocol IngestRepository: Sendable {
    /// Stores one batch in one transaction and returns only after COMMIT.
    func store(_ lines: [PricedLine], rejects: [RejectedLine], totalLines: Int, tid: String, source: String)
        async throws -> IngestResult

    /// Stores one batch whose priced lines arrive through `handOff` while its body is still
    /// being read, in one transaction; returns only after COMMIT. `now` is the reading's clock.
    func store(streaming handOff: BatchHandOff, tid: String, source: String, now: Date) async throws -> IngestResult
}

/// The append half of DESIGN §4's pipeline, in one transaction per batch: new rows into
/// `request_logs` (exactly once per user × request id × time), the holds they settle closed,
/// the batch's ledger charges and what it owes balances and rollups (`pending_charges`,
/// `pending_usage`) — and
/// no account row touched, so concurrent batches never wait for each other on a hot account.
/// The settler folds what is pending into balances and rollups (``Settler``, migration 0010).
public struct PostgresIngestRepository: IngestRepository {
    let pool: PostgresPool
    let partitions: PartitionCache

    public init(pool: PostgresPool) {
        self.pool = pool
        partitions = PartitionCache()
    }

    public func store(_ lines: [PricedLine], rejects: [RejectedLine], totalLines: Int, tid: String, source: String)
        async throws -> IngestResult
    {
        try await storeWhole(lines, rejects: rejects, totalLines: totalLines, tid: tid, source: source)
    }

    /// Stores a batch held whole, in key order. Such batches never deadlock with each other on
    /// one PostgreSQL, but one streamed in arrival order can with this one (StreamedBatch), and
    /// on Citus any two holding the same ids can: the side PostgreSQL aborts is written again
    /// after a pause. `lostTries` counts the deadlocks this batch already lost (streamed).
    func storeWhole(
        _ lines: [PricedLine], rejects: [RejectedLine], totalLines: Int, tid: String, source: String,
        lostTries: Int = 0
    ) async throws -> IngestResult {
        try await ensurePartitions(for: lines)
        func store() async throws -> IngestResult {
            try await retryingDeadlocks(pausing: .ingest, failedSoFar: lostTries) {
                try await pool.withConnection { connection in
                    try connection.transaction { connection in
                        let batchID = try connection.query(Self.nextBatchID)[0].decode(0, as: Int64.self)
                        // The new lines, by their index in `lines` (a batch is held once, not copied).
                        let fresh = lines.isEmpty ? [] : try Self.insertNew(lines, batchID: batchID, on: connection)
                        return try Self.finishBatch(
                            lines, fresh: fresh, rejects: rejects, totalLines: totalLines, batchID: batchID, tid: tid,
                            source: source, on: connection)
                    }
                }
            }
        }
        do {
            return try await store()
        } catch let error as PostgresError where error.isMissingPartition {
            // A month this process had made sure of was dropped since: made again and the batch
            // stored, instead of failing every resend. A month `tally retention` dropped (in
            // another process, unheard of yet) is never made again (migration 0027): the batch
            // fails (503), and is not taken for made, so that its resend looks again.
            let months = Set(lines.map { UTCDay($0.createdAt).monthStart })
            partitions.forget(months)
            try await ensurePartitions(months: months)
            do {
                return try await store()
            } catch let again as PostgresError where again.isMissingPartition {
                partitions.forget(months)
                throw again
            }
        }
    }

    /// The rest of a batch's transaction once its new rows are in: what they owe, the rejects,
    /// the batch row. `fresh` holds the indices in `lines` of the rows stored now.
    static func finishBatch(
        _ lines: [PricedLine], fresh: [Int], rejects: [RejectedLine], totalLines: Int, batchID: Int64, tid: String,
        source: String, on connection: PostgresConnection
    ) throws -> IngestResult {
        if !fresh.isEmpty {
            try appendCharges(of: fresh.lazy.map { lines[$0] }, batchID: batchID, tid: tid, on: connection)
        }
        if !rejects.isEmpty { try storeRejects(rejects, tid: tid, on: connection) }
        try connection.query(
            insertBatch,
            [batchID, tid, source, totalLines, fresh.count, lines.count - fresh.count, rejects.count])
        return IngestResult(
            batchID: batchID, accepted: fresh.count, duplicates: lines.count - fresh.count,
            rejected: rejects, chargedQuota: fresh.reduce(0) { $0 + lines[$1].quota },
            providerRateLimited: fresh.count {
                lines[$0].error?.contains(CatalogEntry.providerRateLimited.rawValue) == true
            })
    }

    /// Inserts the lines whose (user, request id, time) is not stored yet; returns their indices.
    ///
    /// Optimistic: most batches hold only new ids, so the rows are COPYed straight into
    /// `request_logs` (each written once, like a raw COPY). When any id is already stored (a
    /// resent batch, or a concurrent batch that won a race) the COPY fails with a unique
    /// violation; the savepoint undoes it and the rows go through the staging table with
    /// `ON CONFLICT DO NOTHING`, which keeps exactly the new ones.
    static func insertNew(_ lines: [PricedLine], batchID: Int64, on connection: PostgresConnection) throws -> [Int] {
        let candidates = keyOrderedFirsts(of: lines, among: lines.indices)
        try connection.execute("SAVEPOINT ingest_fast_path")
        do {
            try copyRows(candidates.lazy.map { lines[$0] }, batchID: batchID, into: "request_logs", on: connection)
            try connection.execute("RELEASE SAVEPOINT ingest_fast_path")
            return candidates
        } catch let error as PostgresError where error.isUniqueViolationInCopy {
            try connection.execute("ROLLBACK TO SAVEPOINT ingest_fast_path")
        }
        return try insertThroughStaging(lines, candidates: candidates, batchID: batchID, on: connection)
    }

    /// The first occurrence of each line key among `indices`, in the primary key's order
    /// (account, time, request id): concurrent batches holding the same ids (a resend through
    /// another instance) then wait for each other on the first shared id instead of each
    /// holding one the other waits for (a deadlock). Integers decide almost every comparison,
    /// and the key's index is written in its own order.
    static func keyOrderedFirsts(of lines: [PricedLine], among indices: some Sequence<Int>) -> [Int] {
        var seen = Set<LineKey>(minimumCapacity: lines.count)
        var candidates = indices.filter { seen.insert(LineKey(lines[$0])).inserted }
        candidates.sort { left, right in
            let (a, b) = (lines[left], lines[right])
            return (a.userID, a.createdAt, a.requestID) < (b.userID, b.createdAt, b.requestID)
        }
        return candidates
    }

    /// The slow path, for batches holding ids that are stored already: the `candidates` go
    /// through the staging table with `ON CONFLICT DO NOTHING`, which keeps exactly the new
    /// ones; returns those.
    static func insertThroughStaging(
        _ lines: [PricedLine], candidates: [Int], batchID: Int64, on connection: PostgresConnection
    ) throws -> [Int] {
        try connection.execute(createStaging)
        try copyRows(candidates.lazy.map { lines[$0] }, batchID: batchID, into: "ingest_staging", on: connection)
        let inserted = Set(
            try connection.query(insertFromStaging).map {
                LineKey(userID: try $0.decode(0), requestID: try $0.decode(1), micros: try $0.decode(2))
            })
        return candidates.filter { inserted.contains(LineKey(lines[$0])) }
    }

    /// Streams the lines as COPY rows (`stagingColumns` order) into `table`.
    static func copyRows(
        _ lines: some Sequence<PricedLine>, batchID: Int64, into table: String,
        on connection: PostgresConnection
    ) throws {
        try connection.copyIn("COPY \(table) (\(stagingColumns)) FROM STDIN") { writer in
            var row = CopyRow()
            for line in lines {
                row.reset()
                appendCopyRow(line, batchID: batchID, to: &row)
                try writer.write(row.bytes)
            }
        }
    }

    /// What the new lines owe, appended: the open holds they settle (closed now), one ledger
    /// charge per user × token × month, one pending charge per user × token with what the lines
    /// charged and what their holds return (the balance fold applies it), and the pending usage
    /// the roll-up adds.
    static func appendCharges(
        of lines: some Collection<PricedLine>, batchID: Int64, tid: String,
        on connection: PostgresConnection
    ) throws {
        let returned = try settleHolds(of: lines, on: connection)
        let charges = BatchCharges(lines)
        try connection.copyIn(
            "COPY ledger (user_id, token_id, kind, amount, requests, batch_id, tid, usage_month) FROM STDIN"
        ) { writer in
            var row = CopyRow()
            for (key, charge) in charges.ledgerCharges {
                row.reset()
                row.append(key.userID)
                row.append(key.tokenID)
                row.append("charge")
                row.append(-charge.quota)
                row.append(charge.requests)
                row.append(batchID)
                row.append(tid)
                row.append(key.month.description)
                row.endRow()
                try writer.write(row.bytes)
            }
        }
        try connection.copyIn(
            "COPY pending_charges (user_id, token_id, batch_id, quota, requests, last_at, user_returned, token_returned) FROM STDIN"
        ) { writer in
            var row = CopyRow()
            for pending in charges.pendingRows(returning: returned) {
                row.reset()
                row.append(pending.key.userID)
                row.append(pending.key.tokenID)
                row.append(batchID)
                row.append(pending.charge?.quota ?? 0)
                row.append(pending.charge?.requests ?? 0)
                if let charge = pending.charge { row.append(charge.lastAt) } else { row.append(nil as String?) }
                row.append(pending.returned.user)
                row.append(pending.returned.token)
                row.endRow()
                try writer.write(row.bytes)
            }
        }
        try connection.copyIn("COPY pending_usage (\(pendingColumns)) FROM STDIN") { writer in
            var row = CopyRow()
            for (key, totals) in charges.pendingUsage {
                row.reset()
                appendPendingRow(key, totals, batchID: batchID, to: &row)
                try writer.write(row.bytes)
            }
        }
        if !charges.channels.isEmpty {
            try connection.query(
                appendChannelUsage,
                [
                    batchID, PostgresArray.integers(Array(charges.channels.keys)),
                    PostgresArray.integers(Array(charges.channels.values)),
                ])
        }
    }

    static let appendChannelUsage = PreparedStatement(
        "ingest_channel_usage",
        """
        INSERT INTO pending_channel_usage (batch_id, channel_id, quota)
        SELECT $1, c.channel_id, c.quota FROM unnest($2::bigint[], $3::bigint[]) AS c (channel_id, quota)
        """)

    /// Closes the open holds of the lines (same account, key and request id) as settled, and
    /// returns their reservations per account. Most deployments settle a hold per line; a
    /// database without open holds skips the update. (A hold journaled after this check is as
    /// one journaled after the update: it stays open and expires.)
    static func settleHolds(of lines: some Collection<PricedLine>, on connection: PostgresConnection) throws
        -> [BatchCharges.AccountKey: BatchCharges.Returned]
    {
        guard try connection.query(anyOpenHold)[0].decode(0, as: Bool.self) else { return [:] }
        let rows = try connection.query(
            settleHolds,
            [
                PostgresArray.integers(lines.map(\.userID)), PostgresArray.integers(lines.map(\.tokenID)),
                PostgresArray.text(lines.map(\.requestID)),
            ])
        var returned: [BatchCharges.AccountKey: BatchCharges.Returned] = [:]
        try rows.forEach { row in
            let key = BatchCharges.AccountKey(userID: try row.decode(0), tokenID: try row.decode(1))
            returned[key] = BatchCharges.Returned(user: try row.decode(2), token: try row.decode(3))
        }
        return returned
    }

    /// Creates the month partitions a batch needs (outside the batch transaction: DDL takes a
    /// strong lock on the parent, and concurrent batches must not queue behind it for long:
    /// ``LogPartitions``).
    func ensurePartitions(for lines: [PricedLine]) async throws {
        try await ensurePartitions(months: Set(lines.map { UTCDay($0.createdAt).monthStart }))
    }

    func ensurePartitions(months: Set<UTCDay>) async throws {
        let missing = months.filter { !partitions.contains($0) }
        guard !missing.isEmpty else { return }
        for month in missing {
            _ = try await LogPartitions.create(from: month.start, months: 1, pool: pool)
        }
        partitions.insert(missing)
    }

    // MARK: SQL

    static let nextBatchID = PreparedStatement(
        "ingest_next_batch_id",
        "SELECT nextval(pg_get_serial_sequence('ingest_batches', 'id'))")

    /// Written last, with its counts, in the batch's transaction.
    static let insertBatch = PreparedStatement(
        "ingest_insert_batch",
        """
        INSERT INTO ingest_batches (id, tid, source, lines, accepted, duplicates, rejected)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """)

    /// Column order of `ingest_staging`, matched by `appendCopyRow`.
    static let stagingColumns = """
        request_id, created_at, user_id, token_id, channel_id, model, "group", kind, status, is_stream,
        duration_ms, ip, tid, error, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens,
        audio_input_tokens, audio_output_tokens, images, size, quality, video_seconds, resolution, calls,
        predict_time, quota, price_version_id, batch_id
        """

    /// Column order of `pending_usage` rows, matched by `appendPendingRow`.
    static let pendingColumns = """
        user_id, token_id, day, model, "group", kind, requests, failed_requests, prompt_tokens, completion_tokens,
        cached_tokens, cache_write_tokens, audio_input_tokens, audio_output_tokens, images, video_seconds, calls,
        predict_time, quota, batch_id
        """

    /// The slow path's per-connection table, emptied at every commit.
    static let createStaging = """
        CREATE TEMP TABLE IF NOT EXISTS ingest_staging (LIKE request_logs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS
        """

    /// The slow path: insert only what is not stored yet.
    static let insertFromStaging = PreparedStatement(
        "ingest_insert_from_staging",
        """
        INSERT INTO request_logs (\(stagingColumns))
        SELECT \(stagingColumns) FROM ingest_staging
        ON CONFLICT (user_id, created_at, request_id) DO NOTHING
        RETURNING user_id, request_id, (extract(epoch FROM created_at) * 1000000)::bigint
        """)

    static let anyOpenHold = PreparedStatement(
        "ingest_any_open_hold",
        "SELECT EXISTS (SELECT 1 FROM holds WHERE status = 'held')")

    /// A stored line settles the open hold of its account, key and request id: the line's real
    /// cost is charged like any other line's, and the hold's reservation goes back to the
    /// account (and to a limited key) through the batch's `pending_charges` row of the hold's
    /// account. A line of another key is another request's, whatever its id (authorize answers
    /// such a request 409, but a gateway may run it anyway, and in async mode the journal finds
    /// the conflict after the answer): it is charged and leaves the hold to its own line. The
    /// model is not compared: a gateway may log the upstream's name for a mapped model.
    /// $1 user ids, $2 token ids, $3 request ids (one per line).
    static let settleHolds = PreparedStatement(
        "ingest_settle_holds",
        """
        WITH settled AS (
            UPDATE holds h SET status = 'settled', closed_at = now()
            FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS n(user_id, token_id, request_id)
            WHERE h.request_id = n.request_id AND h.user_id = n.user_id AND h.token_id = n.token_id
              AND h.status = 'held'
            RETURNING h.user_id, h.token_id, h.amount, h.token_reserved)
        SELECT user_id, token_id, sum(amount)::bigint, coalesce(sum(amount) FILTER (WHERE token_reserved), 0)::bigint
        FROM settled GROUP BY user_id, token_id
        """)

    static func storeRejects(_ rejects: [RejectedLine], tid: String, on connection: PostgresConnection) throws {
        try connection.copyIn("COPY ingest_rejects (batch_tid, line, request_id, code, message, raw) FROM STDIN") {
            writer in
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
        row.append(usage.videoSeconds.description)
        row.append(usage.resolution)
        row.append(usage.calls)
        row.append(usage.predictTime.description)
        row.append(line.quota)
        row.append(line.priceVersionID)
        row.append(batchID)
        row.endRow()
    }

    /// One `pending_usage` row in `pendingColumns` order.
    static func appendPendingRow(
        _ key: BatchCharges.UsageKey, _ totals: BatchCharges.UsageTotals, batchID: Int64,
        to row: inout CopyRow
    ) {
        row.append(key.userID)
        row.append(key.tokenID)
        row.append(key.day.description)
        row.append(key.model)
        row.append(key.group)
        row.append(key.kind)
        row.append(totals.requests)
        row.append(totals.failedRequests)
        row.append(totals.promptTokens)
        row.append(totals.completionTokens)
        row.append(totals.cachedTokens)
        row.append(totals.cacheWriteTokens)
        row.append(totals.audioInputTokens)
        row.append(totals.audioOutputTokens)
        row.append(totals.images)
        row.append(totals.videoSeconds.description)
        row.append(totals.calls)
        row.append(totals.predictTime.description)
        row.append(totals.quota)
        row.append(batchID)
        row.endRow()
    }
}

/// A stored row's identity: its account, request id and `created_at` in microseconds. The request
/// id is compared by bytes (``ExactText``): found by Swift's string equality, a batch's repeat
/// dropped a second request unbilled where PostgreSQL stores both.
struct LineKey: Hashable {
    let userID: Int64
    let requestID: ExactText
    let micros: Int64

    init(userID: Int64, requestID: String, micros: Int64) {
        self.userID = userID
        self.requestID = ExactText(requestID)
        self.micros = micros
    }

    init(_ line: PricedLine) {
        self.init(
            userID: line.userID, requestID: line.requestID,
            micros: Int64((line.createdAt.timeIntervalSince1970 * 1_000_000).rounded()))
    }
}

/// Months whose `request_logs` partition is known to exist in this process (their first days).
final class PartitionCache: Sendable {
    private let months = Mutex<Set<UTCDay>>([])

    func contains(_ month: UTCDay) -> Bool { months.withLock { $0.contains(month) } }
    func insert(_ more: Set<UTCDay>) { months.withLock { $0.formUnion(more) } }
    func forget(_ gone: Set<UTCDay>) { months.withLock { $0.subtract(gone) } }
    var known: Set<UTCDay> { months.withLock { $0 } }
}
