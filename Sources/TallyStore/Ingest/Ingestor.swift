import Foundation
import TallyCore
import TallyPostgres

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
    public var maxTokens: Int64 = 100_000_000
    public var maxImages: Int64 = 10_000
    public var maxCalls: Int64 = 1_000_000
    public var maxSeconds = ExactDecimal(86_400)

    public init() {}
}

/// The batch is refused as a whole (413): too many lines or bytes.
public struct BatchTooLarge: Error, Sendable, CustomStringConvertible {
    public let description: String
}

/// Turns a batch body into stored, priced, settled rows: parse → validate → resolve keys →
/// rate (TallyCore, at the price version in force at each line's `created_at`) → store.
public struct Ingestor: Sendable {
    let prices: PriceCatalog
    let tokens: TokenDirectory
    let repository: any IngestRepository
    let limits: IngestLimits

    public init(prices: PriceCatalog, tokens: TokenDirectory, repository: any IngestRepository, limits: IngestLimits = IngestLimits()) {
        self.prices = prices
        self.tokens = tokens
        self.repository = repository
        self.limits = limits
    }

    /// Ingests one batch. Bad lines are rejected (and stored) without failing the batch; the
    /// result is returned only after the batch is committed.
    public func ingest(_ body: [UInt8], format: IngestFormat, tid: String, source: String, now: Date = Date()) async throws -> IngestResult {
        guard body.count <= limits.maxBytes else {
            throw BatchTooLarge(description: "The batch is \(body.count) bytes; the limit is \(limits.maxBytes).")
        }
        let lines = try BatchSplitter.lines(of: body)
        guard lines.count <= limits.maxLines else {
            throw BatchTooLarge(description: "The batch has \(lines.count) lines; the limit is \(limits.maxLines).")
        }
        var rejects: [RejectedLine] = []
        var parsed: [(number: Int, range: Range<Int>, line: LogLine)] = []
        parsed.reserveCapacity(lines.count)
        body.withUnsafeBufferPointer { buffer in
            for (number, range) in lines {
                switch Self.parse(UnsafeBufferPointer(rebasing: buffer[range]), format: format) {
                case .success(let line): parsed.append((number, range, line))
                case .failure(let rejection): rejects.append(Self.reject(number, range, body, requestID: rejection.requestID, rejection))
                }
            }
        }
        let identities = try await resolveOwners(parsed.map(\.line))
        let book = prices.book
        var priced: [PricedLine] = []
        priced.reserveCapacity(parsed.count)
        for (number, range, line) in parsed {
            switch price(line, identities: identities, book: book, now: now) {
            case .success(let row): priced.append(row)
            case .failure(let rejection): rejects.append(Self.reject(number, range, body, requestID: line.requestID, rejection))
            }
        }
        rejects.sort { $0.line < $1.line }
        return try await repository.store(priced, rejects: rejects, totalLines: lines.count, tid: tid, source: source)
    }

    private func resolveOwners(_ lines: [LogLine]) async throws -> (byHash: [SecretHash: TokenIdentity], byID: [Int64: TokenIdentity]) {
        var hashes: Set<SecretHash> = []
        var ids: Set<Int64> = []
        for line in lines {
            if let hash = Self.keyHash(of: line) { hashes.insert(hash) } else if let id = line.tokenID { ids.insert(id) }
        }
        return try await tokens.resolve(hashes: hashes, tokenIDs: ids)
    }

    private static func parse(_ bytes: UnsafeBufferPointer<UInt8>, format: IngestFormat) -> Result<LogLine, IngestRejection> {
        Result { () throws(IngestRejection) in
            switch format {
            case .gateway: try LogLine.parse(bytes)
            case .litellm: try LogLine.parseLiteLLM(bytes)
            }
        }
    }

    private func price(_ line: LogLine, identities: (byHash: [SecretHash: TokenIdentity], byID: [Int64: TokenIdentity]),
                       book: PriceBook, now: Date) -> Result<PricedLine, IngestRejection> {
        Result { () throws(IngestRejection) in try validateAndRate(line, identities: identities, book: book, now: now) }
    }

    private static func keyHash(of line: LogLine) -> SecretHash? {
        if let key = line.key, !key.isEmpty { return SecretHash(of: key) }
        return line.keyHash.flatMap(SecretHash.init(hex:))
    }

    /// Validates one parsed line and rates it; throws the reason it cannot be accepted.
    private func validateAndRate(_ line: LogLine, identities: (byHash: [SecretHash: TokenIdentity], byID: [Int64: TokenIdentity]),
                                 book: PriceBook, now: Date) throws(IngestRejection) -> PricedLine {
        let texts = [line.requestID, line.key, line.model, line.group, line.ip, line.tid, line.error,
                     line.usage?.size, line.usage?.quality, line.usage?.resolution]
        guard !texts.contains(where: { $0?.utf8.contains(0) == true }) else {
            throw IngestRejection("invalid_field", "text fields may not contain NUL (\\u0000)")
        }
        guard let requestID = line.requestID, !requestID.isEmpty else { throw IngestRejection("missing_field", "request_id is required") }
        guard requestID.utf8.count <= 128 else { throw IngestRejection("invalid_field", "request_id is longer than 128 bytes") }
        guard let createdAt = line.createdAt else { throw IngestRejection("missing_field", "created_at is required") }
        guard let model = line.model, !model.isEmpty else { throw IngestRejection("missing_field", "model is required") }
        guard createdAt.timeIntervalSince(now) <= limits.maxClockSkew else {
            throw IngestRejection("future_timestamp", "created_at \(PostgresTimestamp.format(createdAt)) is in the future")
        }
        let identity: TokenIdentity
        if let hash = Self.keyHash(of: line) {
            guard let found = identities.byHash[hash] else {
                throw IngestRejection("unknown_key", "no API key matches key(\(line.key.map(Secrets.last6) ?? "hash"))")
            }
            identity = found
        } else if let tokenID = line.tokenID {
            guard let found = identities.byID[tokenID] else { throw IngestRejection("unknown_key", "no token has id \(tokenID)") }
            identity = found
        } else {
            throw IngestRejection("missing_field", "key or token_id is required")
        }
        let status = Int(line.status ?? 200)
        guard (100...599).contains(status) else { throw IngestRejection("invalid_field", "status \(status) is not an HTTP status") }
        let failed = status >= 400
        guard let usage = line.usage ?? (failed ? Usage() : nil) else {
            throw IngestRejection("missing_usage", "a successful request (status \(status)) needs usage")
        }
        try checkPlausible(usage)
        guard let version = book.version(at: createdAt) else {
            throw IngestRejection("no_price_version", "no price version is in force at \(PostgresTimestamp.format(createdAt))")
        }
        let group = line.group.flatMap { $0.isEmpty ? nil : $0 } ?? identity.group
        let rating: Rating
        do {
            rating = try rate(usage, model: model, group: group, failed: failed, sheet: version.sheet)
        } catch {
            throw Self.rejection(for: error, version: version.id)
        }
        guard !rating.capped else { throw IngestRejection("absurd_usage", "the cost of this usage exceeds the largest balance") }
        return PricedLine(
            requestID: requestID, createdAt: createdAt, userID: identity.userID, tokenID: identity.tokenID,
            channelID: line.channelID, model: model, group: group,
            kind: line.kind ?? version.sheet.models[model]?.kind ?? .chat, status: status, isStream: line.stream,
            durationMs: line.durationMs, ip: line.ip, tid: line.tid.flatMap { TraceID.isValid($0) ? $0 : nil },
            error: line.error, usage: usage, quota: rating.units, priceVersionID: version.id)
    }

    private func checkPlausible(_ usage: Usage) throws(IngestRejection) {
        for (name, value) in [("prompt_tokens", usage.promptTokens), ("completion_tokens", usage.completionTokens),
                              ("cached_tokens", usage.cachedTokens), ("cache_write_tokens", usage.cacheWriteTokens),
                              ("audio_input_tokens", usage.audioInputTokens), ("audio_output_tokens", usage.audioOutputTokens)]
        where value > limits.maxTokens {
            throw IngestRejection("absurd_usage", "\(name) \(value) is more than \(limits.maxTokens)")
        }
        if usage.images > limits.maxImages { throw IngestRejection("absurd_usage", "images \(usage.images) is more than \(limits.maxImages)") }
        if usage.calls > limits.maxCalls { throw IngestRejection("absurd_usage", "calls \(usage.calls) is more than \(limits.maxCalls)") }
        for (name, value) in [("video_seconds", usage.videoSeconds), ("predict_time", usage.predictTime)] where value > limits.maxSeconds {
            throw IngestRejection("absurd_usage", "\(name) \(value) is more than \(limits.maxSeconds)")
        }
    }

    private static func rejection(for error: RatingError, version: Int64) -> IngestRejection {
        switch error {
        case .unknownModel(let model): IngestRejection("unknown_model", "model \"\(model.prefix(100))\" has no price in price version \(version)")
        case .unknownGroup(let group): IngestRejection("unknown_group", "group \"\(group.prefix(100))\" is not in price version \(version)")
        case .modelNotInGroup: IngestRejection("model_not_in_group", error.description)
        case .sizeNotSupported: IngestRejection("size_not_supported", error.description)
        }
    }

    private static func reject(_ number: Int, _ range: Range<Int>, _ body: [UInt8], requestID: String?, _ rejection: IngestRejection) -> RejectedLine {
        let raw = String(decoding: body[range.lowerBound..<min(range.upperBound, range.lowerBound + 65_536)], as: UTF8.self)
        return RejectedLine(line: number, requestID: requestID.map(storable), code: rejection.code,
                            message: storable(rejection.message), raw: storable(raw))
    }

    /// PostgreSQL text cannot hold NUL: the stored copy of a rejected line shows it as U+FFFD.
    private static func storable(_ text: String) -> String {
        text.utf8.contains(0) ? text.replacingOccurrences(of: "\u{0}", with: "\u{FFFD}") : text
    }
}

/// Splits a batch body into its lines: NDJSON (blank lines skipped, numbered as in the file)
/// or a JSON array of objects (numbered by position).
enum BatchSplitter {
    static func lines(of body: [UInt8]) throws -> [(number: Int, range: Range<Int>)] {
        var start = 0
        while start < body.count, [0x20, 0x09, 0x0A, 0x0D].contains(body[start]) { start += 1 }
        if start < body.count, body[start] == UInt8(ascii: "[") { return try arrayElements(of: body, from: start) }
        var lines: [(Int, Range<Int>)] = []
        var number = 0
        var lineStart = 0
        for index in 0...body.count where index == body.count || body[index] == 0x0A {
            number += 1
            var end = index
            if end > lineStart, body[end - 1] == 0x0D { end -= 1 }
            if body[lineStart..<end].contains(where: { ![0x20, 0x09].contains($0) }) { lines.append((number, lineStart..<end)) }
            lineStart = index + 1
        }
        return lines
    }

    /// The top-level elements of a JSON array, found by tracking depth and strings.
    private static func arrayElements(of body: [UInt8], from open: Int) throws -> [(number: Int, range: Range<Int>)] {
        var elements: [(Int, Range<Int>)] = []
        var depth = 0
        var inString = false
        var escaped = false
        var elementStart = open + 1
        for index in open..<body.count {
            let byte = body[index]
            if inString {
                if escaped { escaped = false } else if byte == UInt8(ascii: "\\") { escaped = true } else if byte == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"): depth += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth -= 1
                if depth == 0 {
                    appendElement(body, elementStart..<index, to: &elements)
                    guard body[(index + 1)...].allSatisfy({ [0x20, 0x09, 0x0A, 0x0D].contains($0) }) else {
                        throw BatchMalformed(description: "text after the closing ] of the batch array")
                    }
                    return elements
                }
            case UInt8(ascii: ","):
                if depth == 1 {
                    appendElement(body, elementStart..<index, to: &elements)
                    elementStart = index + 1
                }
            default: break
            }
        }
        throw BatchMalformed(description: "the batch array is not closed")
    }

    private static func appendElement(_ body: [UInt8], _ range: Range<Int>, to elements: inout [(Int, Range<Int>)]) {
        var lower = range.lowerBound
        var upper = range.upperBound
        while lower < upper, [0x20, 0x09, 0x0A, 0x0D].contains(body[lower]) { lower += 1 }
        while upper > lower, [0x20, 0x09, 0x0A, 0x0D].contains(body[upper - 1]) { upper -= 1 }
        if lower < upper || !elements.isEmpty { elements.append((elements.count + 1, lower..<upper)) }
    }
}

/// The batch body itself is not NDJSON or a JSON array (400).
public struct BatchMalformed: Error, Sendable, CustomStringConvertible {
    public let description: String
}
