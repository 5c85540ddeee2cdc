import Foundation
import Metrics
import TallyCore
import TallyPostgres

/// A batch stored while its body is still arriving: the transaction opens with the request,
/// and each part of priced lines is COPYed into `request_logs` as soon as it is read, so
/// PostgreSQL inserts one part while the server parses and prices the next (stored whole, a
/// batch is parsed first and copied after, each side idle while the other works). The COMMIT
/// stays the exactly-once point and the answer still follows it.
///
/// The rows go in as they arrive, not in key order, and every line is kept, because a batch
/// may still need the whole path of ``PostgresIngestRepository/store(_:rejects:totalLines:tid:source:)``:
/// - a line repeated or already stored (a resend) fails the COPY with a unique violation at
///   its end: the savepoint undoes it and the kept lines go through the staging table, as there;
/// - a line whose month has no known partition cannot get one inside the open COPY (creating
///   it would wait for this transaction's own lock on the parent): the transaction is rolled
///   back and the batch stored whole, which creates the partition first;
/// - a resend racing its original in another order can deadlock (PostgreSQL aborts one after
///   `deadlock_timeout`; on Citus, where a COPY fills its shards in parallel, the same order
///   does not prevent it): the aborted one is stored whole, in key order, after a pause, and
///   finds the other's rows stored;
/// - an upload slower than the database's `statement_timeout` has its COPY cancelled: the
///   batch is stored whole, in statements as short as before streaming (without this a slow
///   gateway's batch would fail on every resend).
///
/// Each of these rolls the transaction back first and reads the rest of the body after, so no
/// lock is held while a slow client finishes its upload.
extension PostgresIngestRepository {
    /// Why a streamed batch was rolled back and stored whole (`tally_ingest_stream_restarts_total`).
    enum RestartReason: String, Sendable {
        case newMonth = "new_month"
        case deadlock
        case cancelled

        func count() {
            Counter(label: "tally_ingest_stream_restarts_total", dimensions: [("reason", rawValue)]).increment()
        }
    }

    public func store(streaming handOff: BatchHandOff, tid: String, source: String, now: Date) async throws
        -> IngestResult
    {
        // Whatever ends this, a sender still waiting on the hand-off must be let go.
        defer { handOff.stopReading() }
        // Lines are of this month, or of the last one around its end (a gateway's late logs).
        let month = UTCDay(now).monthStart
        try await ensurePartitions(months: [month, UTCDay(number: month.number - 1).monthStart])
        let months = partitions.known
        let outcome: StreamOutcome
        do {
            outcome = try await pool.withConnection { connection in
                try Self.storeArriving(from: handOff, months: months, tid: tid, source: source, on: connection)
            }
        } catch let failed as BodyFailed {
            throw failed.error
        }
        switch outcome {
        case .stored(let result):
            return result
        case .storeWhole(let batch, let reason):
            reason.count()
            return try await storeWhole(
                batch.lines, rejects: batch.rejects, totalLines: batch.totalLines, tid: tid, source: source,
                lostTries: reason == .deadlock ? 1 : 0)
        }
    }

    /// A whole batch, as received through the hand-off.
    struct ReceivedBatch: Sendable {
        var lines: [PricedLine] = []
        var rejects: [RejectedLine] = []
        var totalLines = 0
        /// The end of the body was received: nothing more will come through the hand-off.
        var complete = false
    }

    enum StreamOutcome: Sendable {
        case stored(IngestResult)
        /// Rolled back; store the batch by the whole path.
        case storeWhole(ReceivedBatch, reason: RestartReason)
    }

    /// A line needs a month partition this process does not know of.
    private struct UnknownMonth: Error {}

    /// Why the body could not be read, kept apart from the transaction's own errors until the
    /// store gives up: a key lookup cancelled by `statement_timeout` is a `PostgresError` too,
    /// and taken for the COPY's own cancellation the batch would wait to be stored whole for a
    /// rest of the body that never comes, holding its connection and stream slot for good.
    private struct BodyFailed: Error {
        let error: any Error
    }

    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    static func storeArriving(
        from handOff: BatchHandOff, months: Set<UTCDay>, tid: String, source: String,
        on connection: PostgresConnection
    ) throws -> StreamOutcome {
        var batch = ReceivedBatch()
        let reason: RestartReason
        do {
            let result = try connection.transaction { connection in
                let batchID = try connection.query(nextBatchID)[0].decode(0, as: Int64.self)
                let fresh = try insertArriving(
                    from: handOff, into: &batch, months: months, batchID: batchID, on: connection)
                return try finishBatch(
                    batch.lines, fresh: fresh, rejects: batch.rejects, totalLines: batch.totalLines,
                    batchID: batchID, tid: tid, source: source, on: connection)
            }
            return .stored(result)
        } catch is UnknownMonth {
            reason = .newMonth
        } catch let error as PostgresError where error.isMissingPartition {
            // A month's partition dropped since this process made sure of it: stored whole, which
            // makes it again unless retention dropped it (then the batch fails: see `store`).
            reason = .newMonth
        } catch let error as PostgresError where error.isLostRace {
            // A serialization failure too (Citus, a stricter isolation): like a deadlock, nothing
            // of the transaction remains, and the batch stored whole is written again if it loses.
            reason = .deadlock
        } catch let error as PostgresError where error.sqlState == SQLState.queryCanceled {
            reason = .cancelled
        }
        while !batch.complete, let lines = try receiveLines(from: handOff, into: &batch) { batch.lines += lines }
        return .storeWhole(batch, reason: reason)
    }

    /// COPYs each arriving line not seen before in this batch; returns the indices of the rows
    /// stored (in `batch.lines`, which holds every line received). Throws ``UnknownMonth`` when
    /// a line needs a partition not in `months`.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    private static func insertArriving(
        from handOff: BatchHandOff, into batch: inout ReceivedBatch, months: Set<UTCDay>, batchID: Int64,
        on connection: PostgresConnection
    ) throws -> [Int] {
        var seen = Set<LineKey>()
        var fresh: [Int] = []
        try connection.execute("SAVEPOINT ingest_fast_path")
        do {
            try connection.copyIn("COPY request_logs (\(stagingColumns)) FROM STDIN") { writer in
                var row = CopyRow()
                while let lines = try receiveLines(from: handOff, into: &batch) {
                    let first = batch.lines.count
                    batch.lines += lines
                    // Grown ahead, twice what has arrived: grown by the set itself, one insert
                    // at a time, its rehashing cost 2 % of the server's CPU per line.
                    if seen.capacity < batch.lines.count { seen.reserveCapacity(2 * batch.lines.count) }
                    for (index, line) in zip(first..., lines) {
                        guard months.contains(UTCDay(line.createdAt).monthStart) else { throw UnknownMonth() }
                        guard seen.insert(LineKey(line)).inserted else { continue }
                        fresh.append(index)
                        row.reset()
                        appendCopyRow(line, batchID: batchID, to: &row)
                        try writer.write(row.bytes)
                    }
                    try writer.send()
                }
            }
            try connection.execute("RELEASE SAVEPOINT ingest_fast_path")
            return fresh
        } catch let error as PostgresError where error.isUniqueViolationInCopy {
            try connection.execute("ROLLBACK TO SAVEPOINT ingest_fast_path")
        }
        let candidates = keyOrderedFirsts(of: batch.lines, among: batch.lines.indices)
        return try insertThroughStaging(batch.lines, candidates: candidates, batchID: batchID, on: connection)
    }

    /// The next part's lines, or nil at the end of the body (its rejects and line count then
    /// in `batch`). Rethrows why the body could not be read.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    private static func receiveLines(from handOff: BatchHandOff, into batch: inout ReceivedBatch) throws
        -> [PricedLine]?
    {
        switch handOff.receive() {
        case .lines(let lines):
            return lines
        case .end(let rejects, let totalLines):
            batch.rejects = rejects
            batch.totalLines = totalLines
            batch.complete = true
            return nil
        case .failed(let error):
            throw BodyFailed(error: error)
        }
    }
}
