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
                case "created_at": line.createdAt = try scanner.readTime("created_at")
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
            var rejection = readingUsage ? IngestRejection("invalid_usage", "usage: \(error.message)") : .invalidJSON(error)
            rejection.requestID = line.requestID
            throw rejection
        }
        return line
    }

    /// Parses a LiteLLM `StandardLoggingPayload`: `id` → request id, `startTime` → created_at,
    /// `metadata.user_api_key_hash` → key hash, `status` success/failure → 200/500,
    /// `call_type` → kind, prompt/completion tokens → usage.
    public static func parseLiteLLM(_ bytes: UnsafeBufferPointer<UInt8>) throws(IngestRejection) -> LogLine {
        var scanner = JSONScanner(bytes: bytes)
        var line = LogLine()
        var usage = Usage()
        var start: Double?
        var end: Double?
        do throws(UsageParseError) {
            try scanner.readObject { scanner, key throws(UsageParseError) in
                switch key {
                case "id": line.requestID = try scanner.readOptionalString("id")
                case "model": line.model = try scanner.readOptionalString("model")
                case "startTime": start = try scanner.readSeconds("startTime")
                case "endTime": end = try scanner.readSeconds("endTime")
                case "prompt_tokens": usage.promptTokens = try scanner.readCount("prompt_tokens")
                case "completion_tokens": usage.completionTokens = try scanner.readCount("completion_tokens")
                case "stream": line.stream = try scanner.readBool("stream")
                case "requester_ip_address": line.ip = try scanner.readOptionalString("requester_ip_address")
                case "trace_id": line.tid = try scanner.readOptionalString("trace_id")
                case "call_type": line.kind = LiteLLMCallType.kind(try scanner.readOptionalString("call_type"))
                case "status":
                    let status = try scanner.readOptionalString("status")
                    line.status = status == "failure" ? 500 : 200
                    if status == "failure", line.error == nil { line.error = "upstream_error" }
                case "metadata":
                    if scanner.readNull() { break }
                    try scanner.readObject { scanner, key throws(UsageParseError) in
                        if key == "user_api_key_hash" { line.keyHash = try scanner.readOptionalString(key) } else { try scanner.skipValue() }
                    }
                default: try scanner.skipValue()
                }
            }
            try scanner.expectEnd()
        } catch {
            var rejection = IngestRejection.invalidJSON(error)
            rejection.requestID = line.requestID
            throw rejection
        }
        if let start {
            line.createdAt = Date(timeIntervalSince1970: start)
            if let end, end >= start { line.durationMs = Int64(((end - start) * 1000).rounded()) }
        }
        line.usage = usage
        return line
    }
}

/// LiteLLM `call_type` values and the kinds they map to.
enum LiteLLMCallType {
    static func kind(_ callType: String?) -> RequestKind? {
        guard var name = callType else { return nil }
        if name.hasPrefix("a"), name != "audio_transcription" { name.removeFirst() }
        switch name {
        case "completion", "text_completion", "responses", "anthropic_messages", "generate_content": return .chat
        case "embedding": return .embedding
        case "rerank": return .rerank
        case "image_generation", "image_edit": return .image
        case "transcription", "speech", "audio_transcription": return .audio
        case "video_generation": return .video
        default: return .call
        }
    }
}

extension JSONScanner {
    /// Nothing but whitespace may follow the line's object.
    mutating func expectEnd() throws(UsageParseError) {
        skipWhitespace()
        guard atEnd else { throw error("unexpected text after the object") }
    }

    /// Reads an object, calling `field` with each key; the callback must consume the value.
    mutating func readObject(_ field: (inout JSONScanner, String) throws(UsageParseError) -> Void) throws(UsageParseError) {
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

    /// An RFC 3339 time string, e.g. `2026-11-01T12:00:00.123Z`.
    mutating func readTime(_ name: String) throws(UsageParseError) -> Date? {
        let start = index
        guard let text = try readOptionalString(name) else { return nil }
        guard let time = RFC3339Time(text) else {
            index = start
            throw error("\(name): not an RFC 3339 time (expected e.g. 2026-11-01T12:00:00Z)")
        }
        return time.date
    }

    /// Seconds since the epoch as a JSON number (LiteLLM times); not money, so a Double is fine.
    mutating func readSeconds(_ name: String) throws(UsageParseError) -> Double? {
        if readNull() { return nil }
        let range = try scanNumber().range
        guard let value = Double(String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self)) else {
            throw error("\(name): not a number")
        }
        return value
    }

    mutating func readKind() throws(UsageParseError) -> RequestKind? {
        let start = index
        guard let text = try readOptionalString("kind") else { return nil }
        guard let kind = RequestKind(rawValue: text) else {
            index = start
            throw error("kind: unknown kind \"\(text.prefix(40))\" (expected one of \(RequestKind.allCases.map(\.rawValue).joined(separator: ", ")))")
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
