import Foundation
import Synchronization
import TallyCore
import TallyPostgres
import TallyStore

/// The input formats of a log batch.
public enum IngestFormat: String, Sendable {
    /// Gateway lines (DESIGN §4), one JSON object per line or a JSON array of them.
    case gateway
    /// LiteLLM `StandardLoggingPayload` objects, NDJSON or a JSON array.
    case litellm
}

/// Bounds on a batch and on what one request may plausibly use.
public struct IngestLimits: Sendable {
    public var maxLines = 50_000
    public var maxBytes = 16 * 1024 * 1024
    /// A line dated further ahead than this is refused (gateway clock skew allowance).
    public var maxClockSkew: TimeInterval = 300
    /// What one request may use and cost (shared with `tally quote`).
    public var usage = UsageLimits()
    /// Batches stored while their body arrives, at most at once; more are read whole first.
    /// Each holds a pool connection for the length of its upload, so keep it well under the
    /// pool size (key lookups and authorize need connections too). 0 streams none.
    public var maxStreamedBatches = 8
    /// Batches read whole (no stream free), at most at once; more wait with their bodies unread
    /// (``BatchAdmission``), so memory holds at most this many plus the streams' batches.
    public var maxWholeBatches = 8
    /// How long a batch waits for its turn before it is answered 503 (the gateway resends it):
    /// well under the HTTP idle timeout (60 s), which would close a connection whose body is
    /// not read, and under a gateway's own timeout.
    public var admissionWait: Duration = .seconds(10)

    public init() {}
}

/// The batch is refused as a whole (413): too many lines or bytes.
public struct BatchTooLarge: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// Turns a batch body into stored, priced rows: parse → validate → resolve keys → rate
/// (TallyCore, at the price version in force at each line's `created_at`) → store. The body is
/// read as it arrives (``BatchReader``): each line is parsed and priced while the rest is on
/// its way, and only the priced lines are kept, never a copy of the body.
public struct Ingestor: Sendable {
    let prices: PriceCatalog
    let tokens: TokenDirectory
    let repository: any IngestRepository
    let limits: IngestLimits
    /// Months retention dropped: their lines are rejected (nil: none is known).
    let droppedMonths: DroppedLogMonths?
    private let gate: BatchGate

    public init(
        prices: PriceCatalog, tokens: TokenDirectory, repository: any IngestRepository,
        limits: IngestLimits = IngestLimits(), droppedMonths: DroppedLogMonths? = nil
    ) {
        self.prices = prices
        self.tokens = tokens
        self.repository = repository
        self.limits = limits
        self.droppedMonths = droppedMonths
        gate = BatchGate(
            streams: limits.maxStreamedBatches, whole: limits.maxWholeBatches, patience: limits.admissionWait)
    }

    /// Ingests one batch held in memory. Bad lines are rejected (and stored) without failing
    /// the batch; the result is returned only after the batch is committed.
    /// `linesBefore`: lines of the same input before this body, under the same tid (`tally
    /// ingest`), so that rejects are numbered by their line in the whole input.
    public func ingest(
        _ body: [UInt8], format: IngestFormat, tid: String, source: String, now: Date = Date(), linesBefore: Int = 0
    ) async throws -> IngestResult {
        var reader = reader(format: format, now: now)
        reader.linesBefore = linesBefore
        try await reader.consume(body)
        return try await store(reader, tid: tid, source: source)
    }

    /// Ingests one batch read by `read` (which feeds the reader chunk by chunk, calling
    /// ``BatchReader/advance()`` after each): while a stream slot is free, the batch's
    /// transaction opens at once and stores each part of priced lines while the rest of the
    /// body arrives (``PostgresIngestRepository/store(streaming:tid:source:now:)``); otherwise the
    /// body is read whole first, or, when as many are read whole already, waits unread for its
    /// turn (``BatchAdmission``). Returns after the batch is committed; a body that cannot be
    /// read (too large, malformed, the client gone) stores nothing.
    public func ingest(
        format: IngestFormat, tid: String, source: String, now: Date = Date(),
        read: (inout BatchReader) async throws -> Void
    ) async throws -> IngestResult {
        let kind = try await gate.enter()
        defer { gate.leave(kind) }
        var reader = reader(format: format, now: now)
        guard kind == .stream else {
            try await read(&reader)
            return try await store(reader, tid: tid, source: source)
        }
        let handOff = BatchHandOff()
        reader.handOff = handOff
        async let stored = repository.store(streaming: handOff, tid: tid, source: source, now: now)
        do {
            try await read(&reader)
            let rest = try await reader.finish()
            if await handOff.send(.lines(rest.priced)) {
                await handOff.send(.end(rejects: rest.rejects, totalLines: rest.lines))
            }
        } catch is BatchReader.TransactionStopped {
            // The transaction failed before the body ended: its error answers the batch.
        } catch {
            await handOff.send(.failed(error))
            _ = try? await stored
            throw error
        }
        return try await stored
    }

    /// Batches waiting for their turn to be read (tests).
    var batchesWaiting: Int { gate.waiting }

    /// A reader for one batch body, fed chunk by chunk.
    public func reader(format: IngestFormat, now: Date = Date()) -> BatchReader {
        BatchReader(ingestor: self, format: format, now: now)
    }

    /// Stores what `reader` read (the whole body); returns after the batch is committed.
    public func store(_ reader: BatchReader, tid: String, source: String) async throws -> IngestResult {
        var reader = reader
        let batch = try await reader.finish()
        return try await repository.store(
            batch.priced, rejects: batch.rejects, totalLines: batch.lines, tid: tid, source: source)
    }

    /// The hash of the line's key as authorize reads it (a `Bearer ` scheme, a missing `sk-`, an
    /// admin's `-CHANNEL` suffix: ``RelayKey``), or the hash the line carries.
    static func keyHash(of line: LogLine) -> SecretHash? {
        if let key = line.key, !key.isEmpty { return SecretHash(of: storedForm(of: key)) }
        return line.keyHash.flatMap(SecretHash.init(hex:))
    }

    private static func storedForm(of key: String) -> String { RelayKey(key)?.secret ?? key }

    /// Validates one parsed line and rates it; throws the reason it cannot be accepted.
    /// `identity` is the owner of its key (or token id), nil when none matches.
    func validateAndRate(_ line: LogLine, identity: TokenIdentity?, book: PriceBook, now: Date) throws(IngestRejection)
        -> PricedLine
    {
        try Self.rejectNUL(in: line)
        guard let requestID = line.requestID, !requestID.isEmpty else {
            throw IngestRejection("missing_field", "request_id is required")
        }
        guard requestID.utf8.count <= Authorizer.maximumRequestIDLength else {
            throw IngestRejection(
                "invalid_field", "request_id is longer than \(Authorizer.maximumRequestIDLength) bytes")
        }
        guard let createdAt = line.createdAt else { throw IngestRejection("missing_field", "created_at is required") }
        guard let model = line.model, !model.isEmpty else {
            throw IngestRejection("missing_field", "model is required")
        }
        guard createdAt.timeIntervalSince(now) <= limits.maxClockSkew else {
            throw IngestRejection(
                "future_timestamp", "created_at \(PostgresTimestamp.format(createdAt)) is in the future")
        }
        let month = UsageMonth(containing: createdAt)
        if let droppedMonths, droppedMonths.contains(month) {
            throw IngestRejection(
                "month_dropped",
                "the request rows of \(month) were dropped by retention: a line of that month cannot be told "
                    + "from one already charged")
        }
        guard let identity else {
            if Self.keyHash(of: line) != nil {
                throw IngestRejection(
                    "unknown_key",
                    "no API key matches key(\(line.key.map { Secrets.last6(Self.storedForm(of: $0)) } ?? "hash"))")
            } else if let tokenID = line.tokenID {
                throw IngestRejection("unknown_key", "no token has id \(tokenID)")
            }
            throw IngestRejection("missing_field", "key or token_id is required")
        }
        let status = Int(line.status ?? 200)
        guard (100...599).contains(status) else {
            throw IngestRejection("invalid_field", "status \(status) is not an HTTP status")
        }
        // Stored in `integer` columns: a larger value would fail the whole batch's COPY.
        guard line.durationMs <= Int32.max else {
            throw IngestRejection(
                "invalid_field", "duration_ms \(line.durationMs) is more than \(Int32.max) (24.8 days)")
        }
        if let channelID = line.channelID, channelID > Int32.max {
            throw IngestRejection("invalid_field", "channel_id \(channelID) is more than \(Int32.max)")
        }
        let failed = status >= 400
        guard let usage = line.usage ?? (failed ? Usage() : nil) else {
            throw IngestRejection("missing_usage", "a successful request (status \(status)) needs usage")
        }
        try limits.usage.checkQuantities(usage)
        guard let version = book.version(at: createdAt) else {
            throw IngestRejection(
                "no_price_version", "no price version is in force at \(PostgresTimestamp.format(createdAt))")
        }
        try UsageLimits.checkMeasured(usage, of: model, as: line.kind, failed: failed, sheet: version.sheet)
        let group = line.group.flatMap { $0.isEmpty ? nil : $0 } ?? identity.group
        let rating: Rating
        do {
            rating = try rate(usage, model: model, group: group, failed: failed, sheet: version.sheet)
        } catch {
            throw Self.rejection(for: error, version: version.id)
        }
        try limits.usage.checkCost(rating)
        return PricedLine(
            requestID: requestID, createdAt: createdAt, userID: identity.userID, tokenID: identity.tokenID,
            channelID: line.channelID, model: model, group: group,
            kind: line.kind ?? version.sheet.models[model]?.kind ?? .chat, status: status, isStream: line.stream,
            durationMs: line.durationMs, ip: line.ip, tid: line.tid.flatMap { TraceID.isValid($0) ? $0 : nil },
            error: line.error, usage: usage, quota: rating.units, priceVersionID: version.id)
    }

    /// Each text field checked on its own: an array of them, built per line, cost a heap
    /// allocation and a retain per field on every ingested line.
    private static func rejectNUL(in line: LogLine) throws(IngestRejection) {
        func hasNUL(_ text: String?) -> Bool { text.map(containsNUL) ?? false }
        let usage = line.usage
        if hasNUL(line.requestID) || hasNUL(line.key) || hasNUL(line.model) || hasNUL(line.group)
            || hasNUL(line.ip) || hasNUL(line.tid) || hasNUL(line.error) || hasNUL(usage?.size)
            || hasNUL(usage?.quality) || hasNUL(usage?.resolution)
        {
            throw IngestRejection("invalid_field", "text fields may not contain NUL (\\u0000)")
        }
    }

    private static func rejection(for error: RatingError, version: Int64) -> IngestRejection {
        switch error {
        case .unknownModel(let model):
            IngestRejection("unknown_model", "model \"\(model.prefix(100))\" has no price in price version \(version)")
        case .unknownGroup(let group):
            IngestRejection("unknown_group", "group \"\(group.prefix(100))\" is not in price version \(version)")
        case .modelNotInGroup: IngestRejection("model_not_in_group", error.description)
        case .sizeNotSupported, .resolutionNotSupported: IngestRejection("size_not_supported", error.description)
        }
    }

    /// PostgreSQL text cannot hold NUL: the stored copy of a rejected line shows it as U+FFFD.
    static func storable(_ text: String) -> String {
        containsNUL(text) ? text.replacingOccurrences(of: "\u{0}", with: "\u{FFFD}") : text
    }

    /// Whether `text` holds a NUL byte, looked for with `memchr` (a byte-wise search of every
    /// text field was a few per cent of ingest's CPU).
    static func containsNUL(_ text: String) -> Bool {
        text.utf8.withContiguousStorageIfAvailable { utf8 in
            guard let start = utf8.baseAddress else { return false }
            return memchr(start, 0, utf8.count) != nil
        } ?? text.utf8.contains(0)
    }
}

/// Runs ``BatchAdmission`` under a lock for the ingestor's batches: a batch waits here for its
/// turn, at most `patience`, and leaves the queue when its request is cancelled.
final class BatchGate: Sendable {
    /// The batch waited `patience` for its turn: answered 503, so that its gateway sends it
    /// again (nothing of it was read or stored).
    struct Busy: Error {}

    private struct State {
        var admission: BatchAdmission
        var nextID = 0
        var waiters: [Int: CheckedContinuation<BatchAdmission.Kind, any Error>] = [:]
    }

    private let state: Mutex<State>
    private let patience: Duration

    init(streams: Int, whole: Int, patience: Duration) {
        state = Mutex(State(admission: BatchAdmission(streams: streams, whole: whole)))
        self.patience = patience
    }

    /// How the batch may be read, once it may; throws ``Busy`` after `patience` in the queue and
    /// `CancellationError` if its task is cancelled while it waits. Every batch that entered
    /// calls ``leave(_:)`` when it ends.
    func enter() async throws -> BatchAdmission.Kind {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let now: Result<BatchAdmission.Kind, any Error>? = state.withLock { state in
                    // A cancellation that came first found nothing to take out of the queue.
                    if Task.isCancelled { return .failure(CancellationError()) }
                    guard let kind = state.admission.arrive(id) else {
                        state.waiters[id] = continuation
                        return nil
                    }
                    return .success(kind)
                }
                guard let now else { return giveUp(id, after: patience) }
                continuation.resume(with: now)
            }
        } onCancel: {
            remove(id)?.resume(throwing: CancellationError())
        }
    }

    /// Waiting batch `id` out of the queue, if it still waits.
    private func remove(_ id: Int) -> CheckedContinuation<BatchAdmission.Kind, any Error>? {
        state.withLock { state in state.admission.leave(id) ? state.waiters.removeValue(forKey: id) : nil }
    }

    private func giveUp(_ id: Int, after patience: Duration) {
        Task {
            try? await Task.sleep(for: patience)
            remove(id)?.resume(throwing: Busy())
        }
    }

    /// A batch read as `kind` ended: the batches waiting for its place go on.
    func leave(_ kind: BatchAdmission.Kind) {
        let admitted = state.withLock { state in
            state.admission.end(kind).compactMap { next in
                state.waiters.removeValue(forKey: next.id).map { (waiter: $0, kind: next.kind) }
            }
        }
        for next in admitted { next.waiter.resume(returning: next.kind) }
    }

    /// Batches waiting for their turn now (tests).
    var waiting: Int { state.withLock { $0.admission.waiting.count } }
}
