import Foundation

/// One finished upstream request as the gateway reports it (DESIGN §4), before validation.
/// Fields the line omits are nil; `parse` only checks JSON shape and types.
public struct LogLine: Sendable, Equatable {
    public var requestID: String?
    public var createdAt: Date?
    /// The full API key (`sk-…`); hashed at once by the ingest pipeline.
    public var key: String?
    /// SHA-256 of the key as 64 hex characters (LiteLLM's `user_api_key_hash`).
    public var keyHash: String?
    public var tokenID: Int64?
    public var model: String?
    public var group: String?
    public var channelID: Int64?
    public var kind: RequestKind?
    public var status: Int64?
    public var stream = false
    public var durationMs: Int64 = 0
    public var ip: String?
    public var tid: String?
    /// The upstream or gateway error code, e.g. `provider_rate_limited`.
    public var error: String?
    public var usage: Usage?

    public init() {}
}

/// Why a line was not accepted: a stable code and a message for people.
public struct IngestRejection: Error, Sendable, Equatable, CustomStringConvertible {
    public let code: String
    public let message: String
    /// The line's request id, when it was read before the problem was found.
    public var requestID: String?

    public init(_ code: String, _ message: String, requestID: String? = nil) {
        self.code = code
        self.message = message
        self.requestID = requestID
    }

    public var description: String { "\(code): \(message)" }

    static func invalidJSON(_ error: UsageParseError) -> IngestRejection {
        IngestRejection("invalid_json", "\(error.message) (at byte \(error.offset))")
    }
}

extension LogLine {
    /// `created_at` to whole microseconds, as PostgreSQL stores it: the price version, the
    /// ledger's month, the rollup's day and the stored row then name one instant (a finer
    /// fraction, as Go's RFC3339Nano writes, could put them on two sides of midnight).
    public static func storedInstant(_ date: Date) -> Date {
        Date(timeIntervalSince1970: (date.timeIntervalSince1970 * 1_000_000).rounded() / 1_000_000)
    }

    /// Parses one gateway log line (a JSON object, nothing after it but whitespace). Unknown keys
    /// are ignored.
    public static func parse(_ bytes: UnsafeBufferPointer<UInt8>) throws(IngestRejection) -> LogLine {
        var scanner = JSONScanner(bytes: bytes)
        var line = LogLine()
        var readingUsage = false
        do throws(UsageParseError) {
            try scanner.readObject { scanner, key throws(UsageParseError) in
                switch key {
                case "request_id": line.requestID = try scanner.readOptionalString("request_id")
                case "created_at": line.createdAt = try scanner.readTime("created_at").map(Self.storedInstant)
                case "key": line.key = try scanner.readOptionalString("key")
                case "token_id": line.tokenID = try scanner.readOptionalCount("token_id")
                case "model": line.model = try scanner.readOptionalString("model")
                case "group": line.group = try scanner.readOptionalString("group")
                case "channel_id": line.channelID = try scanner.readOptionalCount("channel_id")
                case "kind": line.kind = try scanner.readKind()
                case "status": line.status = try scanner.readOptionalCount("status")
                case "stream": line.stream = try scanner.readBool("stream")
                case "duration_ms": line.durationMs = try scanner.readOptionalCount("duration_ms") ?? 0
                case "ip": line.ip = try scanner.readOptionalString("ip")
                case "tid": line.tid = try scanner.readOptionalString("tid")
                case "error": line.error = try scanner.readErrorCode()
                case "usage":
                    readingUsage = true
                    line.usage = scanner.readNull() ? nil : try scanner.readUsageObject()
                    readingUsage = false
                default: try scanner.skipValue()
                }
            }
            try scanner.expectEnd()
        } catch {
            var rejection =
                readingUsage ? IngestRejection("invalid_usage", "usage: \(error.message)") : .invalidJSON(error)
            rejection.requestID = line.requestID
            throw rejection
        }
        return line
    }
}

extension JSONScanner {
    /// Nothing but whitespace may follow the line's object.
    mutating func expectEnd() throws(UsageParseError) {
        skipWhitespace()
        guard atEnd else { throw error("unexpected text after the object") }
    }

    /// Reads an object, calling `field` with each key; the callback must consume the value.
    mutating func readObject(_ field: (inout JSONScanner, String) throws(UsageParseError) -> Void)
        throws(UsageParseError)
    {
        skipWhitespace()
        try expect(UInt8(ascii: "{"), "a JSON object")
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            return
        }
        while true {
            skipWhitespace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a key string") }
            let key = try readString()
            skipWhitespace()
            try expect(UInt8(ascii: ":"), "\":\" after a key")
            skipWhitespace()
            try field(&self, key)
            skipWhitespace()
            guard index < bytes.count else { throw error("unterminated object") }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                continue
            }
            try expect(UInt8(ascii: "}"), "\",\" or \"}\"")
            skipWhitespace()
            return
        }
    }

    /// `readObject`, or nothing for null.
    mutating func readOptionalObject(_ field: (inout JSONScanner, String) throws(UsageParseError) -> Void)
        throws(UsageParseError)
    {
        if readNull() { return }
        try readObject(field)
    }

    mutating func readOptionalCount(_ name: String) throws(UsageParseError) -> Int64? {
        if readNull() { return nil }
        return try readCount(name)
    }

    mutating func readBool(_ name: String) throws(UsageParseError) -> Bool {
        if readNull() { return false }
        guard index < bytes.count else { throw error("\(name): expected true or false") }
        if bytes[index] == UInt8(ascii: "t") {
            try literal("true")
            return true
        }
        guard bytes[index] == UInt8(ascii: "f") else { throw error("\(name): expected true or false") }
        try literal("false")
        return false
    }

    /// An RFC 3339 time string (`2026-11-01T12:00:00.123Z`), or a Unix time as a JSON number
    /// (see ``readUnixTime(_:)``), as new-api-style gateways log it.
    mutating func readTime(_ name: String) throws(UsageParseError) -> Date? {
        if readNull() { return nil }
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return try readUnixTime(name) }
        let start = index
        guard let text = try readOptionalString(name) else { return nil }
        guard let time = RFC3339Time(text) else {
            index = start
            throw error("\(name): not an RFC 3339 time (expected e.g. 2026-11-01T12:00:00Z or Unix seconds)")
        }
        return time.date
    }

    /// 10000-01-01T00:00:00Z: times from then on cannot be printed as RFC 3339 or stored.
    static let year10000 = 253_402_300_800.0

    /// A Unix time as a JSON number: seconds since the epoch, fractions allowed, or milliseconds
    /// when the value is above 1e11 (which as seconds would be past the year 5000). Negative
    /// values and times after 9999 are refused. Not money, so a Double is exact enough (well
    /// under a microsecond for today's times).
    mutating func readUnixTime(_ name: String) throws(UsageParseError) -> Date? {
        if readNull() { return nil }
        let start = index
        let range = try scanNumber().range
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)
        guard var seconds = Double(text), seconds.isFinite, seconds >= 0 else {
            index = start
            throw error("\(name): not a Unix time (expected seconds or milliseconds since 1970, ≥ 0)")
        }
        if seconds > 1e11 { seconds /= 1000 }
        guard seconds < Self.year10000 else {
            index = start
            throw error("\(name): Unix time \(text.prefix(40)) is after the year 9999")
        }
        return Date(timeIntervalSince1970: seconds)
    }

    mutating func readKind() throws(UsageParseError) -> RequestKind? {
        let start = index
        guard let text = try readOptionalString("kind") else { return nil }
        guard let kind = RequestKind(rawValue: text) else {
            index = start
            throw error(
                "kind: unknown kind \"\(text.prefix(40))\" (expected one of \(RequestKind.allCases.map(\.rawValue).joined(separator: ", ")))"
            )
        }
        return kind
    }

    /// `error` may be a code string or an object with a `code` (OpenAI style).
    mutating func readErrorCode() throws(UsageParseError) -> String? {
        if readNull() { return nil }
        guard index < bytes.count, bytes[index] == UInt8(ascii: "{") else { return try readOptionalString("error") }
        var code: String?
        var type: String?
        try readObject { scanner, key throws(UsageParseError) in
            switch key {
            case "code": code = try scanner.readScalarText("error.code")
            case "type": type = try scanner.readOptionalString("error.type")
            default: try scanner.skipValue()
            }
        }
        return code ?? type ?? "error"
    }

    /// A string, or a number kept as its text (`"code": 429`), or nil for null.
    mutating func readScalarText(_ name: String) throws(UsageParseError) -> String? {
        if readNull() { return nil }
        guard index < bytes.count, bytes[index] != UInt8(ascii: "\"") else { return try readOptionalString(name) }
        let range = try scanNumber().range
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }
}
