import Foundation
import TallyCore
import TallyStore

/// One batch body read as it arrives: every complete line is parsed at once and, when its key
/// is in the ``TokenDirectory`` cache, validated and rated too, so the body is never held;
/// a line whose key is not cached waits (with its text, in case it is rejected) until enough
/// such lines gather for one lookup. What is kept is the priced lines and the rejects; with a
/// ``BatchHandOff`` the priced lines go on to the batch's open transaction part by part.
public struct BatchReader {
    /// Lines waiting for their key's owner are looked up together once this many gathered.
    static let lookupBatch = 1_000
    /// Priced lines are handed to a streaming transaction in parts of this many.
    static let partSize = 1_000

    /// The batch's transaction stopped reading (it failed; its error is the batch's answer).
    struct TransactionStopped: Error {}

    let ingestor: Ingestor
    let format: IngestFormat
    /// The instance's book as of the last chunk: a version stored while the body arrives
    /// prices the lines after it (each line by the version in force at its `created_at`).
    private var book: PriceBook
    let now: Date
    private var splitter = LineSplitter()
    private var bytes = 0
    private var lines = 0
    private var priced: [PricedLine] = []
    private var rejects: [RejectedLine] = []
    private var waiting: [(number: Int, line: LogLine, text: [UInt8])] = []
    /// The request ids of `waiting`: a later line with one of them waits too, whatever its key,
    /// so that a batch's first line of a request is the one kept (the repeats are dropped in
    /// the order lines are priced, and a cached key would price a later repeat first).
    private var waitingRequestIDs: Set<ExactText> = []
    /// Where priced lines go while the body is read; nil when the batch is stored whole.
    var handOff: BatchHandOff?
    /// Lines before this body's first (`tally ingest` cuts a file into batches under one tid):
    /// a reject is numbered by its line in the whole input.
    var linesBefore = 0

    init(ingestor: Ingestor, format: IngestFormat, now: Date) {
        self.ingestor = ingestor
        self.format = format
        self.book = ingestor.prices.book
        self.now = now
    }

    /// Reads the next chunk of the body. Throws ``BatchTooLarge`` past the byte or line limit
    /// and ``BatchMalformed`` for a body that is neither NDJSON nor a JSON array.
    public mutating func feed(_ chunk: UnsafeRawBufferPointer) throws {
        bytes += chunk.count
        guard bytes <= ingestor.limits.maxBytes else {
            throw BatchTooLarge(description: "The batch is larger than \(ingestor.limits.maxBytes) bytes.")
        }
        book = ingestor.prices.book
        // Taken out while it runs (`read` mutates self): left in place, the copy would share the
        // line in progress with it, and every chunk would copy that whole line before appending.
        var splitter = self.splitter
        self.splitter = LineSplitter()
        defer { self.splitter = splitter }
        try splitter.feed(chunk.assumingMemoryBound(to: UInt8.self)) { try read(line: $1, number: linesBefore + $0) }
    }

    /// Call after each ``feed(_:)``: looks keys up once enough lines wait for one, and hands
    /// a part of priced lines on when the batch streams (waiting while the transaction is
    /// behind, so a fast client cannot fill memory).
    public mutating func advance() async throws {
        if waiting.count >= Self.lookupBatch { try await lookUpKeys() }
        guard let handOff, priced.count >= Self.partSize else { return }
        let part = priced
        priced = []
        guard await handOff.send(.lines(part)) else { throw TransactionStopped() }
    }

    /// Resolves the owners of the waiting lines' keys in one query, and prices those lines.
    mutating func lookUpKeys() async throws {
        guard !waiting.isEmpty else { return }
        var hashes: Set<SecretHash> = [], ids: Set<Int64> = []
        for (_, line, _) in waiting {
            if let hash = Ingestor.keyHash(of: line) {
                hashes.insert(hash)
            } else if let id = line.tokenID {
                ids.insert(id)
            }
        }
        let owners = try await ingestor.tokens.resolve(hashes: hashes, tokenIDs: ids)
        for (number, line, text) in waiting {
            let identity =
                Ingestor.keyHash(of: line).map { owners.byHash[$0] } ?? line.tokenID.flatMap { owners.byID[$0] }
            price(line, identity: identity, number: number, text: text)
        }
        waiting.removeAll()
        waitingRequestIDs.removeAll()
    }

    /// Feeds a whole chunk held in memory, looking keys up as needed.
    public mutating func consume(_ chunk: [UInt8]) async throws {
        try chunk.withUnsafeBytes { try feed($0) }
        try await advance()
    }

    /// Ends the body: the priced lines not handed on yet, the rejects (in line order) and the
    /// number of lines.
    mutating func finish() async throws -> (priced: [PricedLine], rejects: [RejectedLine], lines: Int) {
        var splitter = self.splitter
        self.splitter = LineSplitter()
        defer { self.splitter = splitter }
        try splitter.finish { try read(line: $1, number: linesBefore + $0) }
        try await lookUpKeys()
        rejects.sort { $0.line < $1.line }
        return (priced, rejects, lines)
    }

    private mutating func read(line bytes: UnsafeBufferPointer<UInt8>, number: Int) throws {
        lines += 1
        guard lines <= ingestor.limits.maxLines else {
            throw BatchTooLarge(description: "The batch has more than \(ingestor.limits.maxLines) lines.")
        }
        let line: LogLine
        do throws(IngestRejection) {
            line = try format == .gateway ? LogLine.parse(bytes) : LogLine.parseLiteLLM(bytes)
        } catch {
            rejects.append(Self.reject(number, bytes, requestID: error.requestID, error))
            return
        }
        if let hash = Ingestor.keyHash(of: line) {
            guard let owner = ingestor.tokens.cached(hash: hash, now: now), !repeatsWaiting(line) else {
                return wait(line, number: number, bytes: bytes)
            }
            price(line, identity: owner, number: number, bytes: bytes)
        } else if let id = line.tokenID {
            guard let owner = ingestor.tokens.cached(tokenID: id, now: now), !repeatsWaiting(line) else {
                return wait(line, number: number, bytes: bytes)
            }
            price(line, identity: owner, number: number, bytes: bytes)
        } else {
            price(line, identity: nil, number: number, bytes: bytes)
        }
    }

    private mutating func wait(_ line: LogLine, number: Int, bytes: UnsafeBufferPointer<UInt8>) {
        waiting.append((number, line, Array(bytes)))
        if let requestID = line.requestID { waitingRequestIDs.insert(ExactText(requestID)) }
    }

    /// Whether an earlier line of the same request id waits for its key's owner.
    private func repeatsWaiting(_ line: LogLine) -> Bool {
        guard !waitingRequestIDs.isEmpty, let requestID = line.requestID else { return false }
        return waitingRequestIDs.contains(ExactText(requestID))
    }

    private mutating func price(_ line: LogLine, identity: TokenIdentity?, number: Int, text: [UInt8]) {
        text.withUnsafeBufferPointer { price(line, identity: identity, number: number, bytes: $0) }
    }

    private mutating func price(
        _ line: LogLine, identity: TokenIdentity?, number: Int, bytes: UnsafeBufferPointer<UInt8>
    ) {
        do throws(IngestRejection) {
            priced.append(try ingestor.validateAndRate(line, identity: identity, book: book, now: now))
        } catch {
            rejects.append(Self.reject(number, bytes, requestID: line.requestID, error))
        }
    }

    private static func reject(
        _ number: Int, _ bytes: UnsafeBufferPointer<UInt8>, requestID: String?,
        _ rejection: IngestRejection
    ) -> RejectedLine {
        // Kept for admins to read: the keys in it masked first (a cut key would keep its head).
        let raw = String(decoding: KeyRedaction.masked(bytes).prefix(65_536), as: UTF8.self)
        // An id longer than any request's is kept in the raw line only: indexed, a few KiB of
        // it failed the batch's COPY of its rejects (every resend again).
        let storedID = requestID.flatMap { $0.utf8.count <= Authorizer.maximumRequestIDLength ? $0 : nil }
        return RejectedLine(
            line: number, requestID: storedID.map(Ingestor.storable), code: rejection.code,
            message: Ingestor.storable(rejection.message), raw: Ingestor.storable(raw))
    }
}
