/// The body of `POST /gateway/v1/authorize` (DESIGN §5).
public struct AuthorizeRequest: Sendable, Equatable, Decodable {
    public var requestID: String?
    public var key: String?
    public var model: String?
    public var ip: String?
    public var channelID: Int64?
    public var estimate: AuthorizeEstimate?

    public init(
        requestID: String?, key: String?, model: String?, ip: String? = nil, channelID: Int64? = nil,
        estimate: AuthorizeEstimate? = nil
    ) {
        self.requestID = requestID
        self.key = key
        self.model = model
        self.ip = ip
        self.channelID = channelID
        self.estimate = estimate
    }

    enum CodingKeys: String, CodingKey {
        case requestID = "request_id", key, model, ip, channelID = "channel_id", estimate
    }
}

extension AuthorizeRequest {
    /// Reads the common shape of the body in one pass over its bytes, without Foundation: an
    /// object of known fields, each at most once, ASCII strings without escapes, non-negative
    /// integers, no nulls. Returns nil for anything else — which JSONDecoder then reads (and
    /// words its errors), so this never decides differently from it, only faster.
    public static func parseCommon(_ utf8: UnsafeBufferPointer<UInt8>) -> AuthorizeRequest? {
        var reader = CommonShapeReader(scanner: JSONScanner(bytes: utf8))
        return reader.request()
    }
}

/// The reader behind ``AuthorizeRequest/parseCommon(_:)``: nil at the first thing outside the
/// common shape.
private struct CommonShapeReader {
    var scanner: JSONScanner

    private enum Field: CaseIterable {
        case requestID, key, model, ip, channelID, estimate
        case promptTokens, completionTokens, cachedTokens, cacheWriteTokens, audioInputTokens, audioOutputTokens
        case images, calls, size, quality, resolution, prompt, promptChars, inputChars, maxTokens, n

        var name: StaticString {
            switch self {
            case .requestID: "request_id"
            case .key: "key"
            case .model: "model"
            case .ip: "ip"
            case .channelID: "channel_id"
            case .estimate: "estimate"
            case .promptTokens: "prompt_tokens"
            case .completionTokens: "completion_tokens"
            case .cachedTokens: "cached_tokens"
            case .cacheWriteTokens: "cache_write_tokens"
            case .audioInputTokens: "audio_input_tokens"
            case .audioOutputTokens: "audio_output_tokens"
            case .images: "images"
            case .calls: "calls"
            case .size: "size"
            case .quality: "quality"
            case .resolution: "resolution"
            case .prompt: "prompt"
            case .promptChars: "prompt_chars"
            case .inputChars: "input_chars"
            case .maxTokens: "max_tokens"
            case .n: "n"
            }
        }

        static let top: [Field] = [.requestID, .key, .model, .ip, .channelID, .estimate]
        static let inEstimate: [Field] = allCases.filter { !top.contains($0) }
    }

    mutating func request() -> AuthorizeRequest? {
        var request = AuthorizeRequest(requestID: nil, key: nil, model: nil)
        let complete = object(of: Field.top) { field, reader in
            switch field {
            case .channelID:
                request.channelID = reader.count()
                return request.channelID != nil
            case .estimate:
                request.estimate = reader.estimate()
                return request.estimate != nil
            default:
                guard let text = reader.string() else { return false }
                switch field {
                case .requestID: request.requestID = text
                case .key: request.key = text
                case .model: request.model = text
                default: request.ip = text
                }
                return true
            }
        }
        scanner.skipWhitespace()
        return complete && scanner.atEnd ? request : nil
    }

    private mutating func estimate() -> AuthorizeEstimate? {
        var estimate = AuthorizeEstimate()
        var usage = Usage()
        var prompt: String?
        let complete = object(of: Field.inEstimate) { field, reader in
            guard field != .prompt, field != .size, field != .quality, field != .resolution else {
                guard let text = reader.string() else { return false }
                switch field {
                case .prompt: prompt = text
                case .size: usage.size = text.isEmpty ? nil : text
                case .quality: usage.quality = text.isEmpty ? nil : text
                default: usage.resolution = text.isEmpty ? nil : text
                }
                return true
            }
            guard let value = reader.count() else { return false }
            switch field {
            case .promptTokens: usage.promptTokens = value
            case .completionTokens: usage.completionTokens = value
            case .cachedTokens: usage.cachedTokens = value
            case .cacheWriteTokens: usage.cacheWriteTokens = value
            case .audioInputTokens: usage.audioInputTokens = value
            case .audioOutputTokens: usage.audioOutputTokens = value
            case .images: usage.images = value
            case .calls: usage.calls = value
            case .promptChars: estimate.promptChars = value
            case .inputChars: estimate.inputChars = value
            case .maxTokens: estimate.maxTokens = value
            default: estimate.n = value
            }
            return true
        }
        guard complete else { return nil }
        estimate.usage = usage
        // As the Decodable estimate: a prompt's length wins over prompt_chars.
        if let prompt { estimate.promptChars = Int64(prompt.count) }
        return estimate
    }

    /// Reads an object whose keys are among `fields`, each at most once; `value` reads the
    /// field's value (false: not the common shape).
    private mutating func object(of fields: [Field], _ value: (Field, inout CommonShapeReader) -> Bool) -> Bool {
        scanner.skipWhitespace()
        guard (try? scanner.expect(UInt8(ascii: "{"), "{")) != nil else { return false }
        scanner.skipWhitespace()
        if !scanner.atEnd, scanner.bytes[scanner.index] == UInt8(ascii: "}") {
            scanner.index += 1
            return true
        }
        var seen: [Field] = []
        while true {
            scanner.skipWhitespace()
            guard let key = plainString(), let field = fields.first(where: { Self.equals($0.name, key) }),
                !seen.contains(field)
            else { return false }
            seen.append(field)
            scanner.skipWhitespace()
            guard (try? scanner.expect(UInt8(ascii: ":"), ":")) != nil else { return false }
            scanner.skipWhitespace()
            guard value(field, &self) else { return false }
            scanner.skipWhitespace()
            guard !scanner.atEnd else { return false }
            if scanner.bytes[scanner.index] == UInt8(ascii: ",") {
                scanner.index += 1
                continue
            }
            return (try? scanner.expect(UInt8(ascii: "}"), "}")) != nil
        }
    }

    private static func equals(_ name: StaticString, _ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard name.utf8CodeUnitCount == bytes.count else { return false }
        return bytes.indices.allSatisfy { name.utf8Start[$0] == bytes[$0] }
    }

    /// A string of printable ASCII without escapes, as its bytes.
    private mutating func plainString() -> UnsafeBufferPointer<UInt8>? {
        guard !scanner.atEnd, scanner.bytes[scanner.index] == UInt8(ascii: "\"") else { return nil }
        let start = scanner.index + 1
        var hasEscape = false
        guard (try? scanner.skipString(hasEscape: &hasEscape)) != nil, !hasEscape else { return nil }
        let text = UnsafeBufferPointer(rebasing: scanner.bytes[start..<(scanner.index - 1)])
        return text.allSatisfy({ $0 < 0x80 }) ? text : nil
    }

    private mutating func string() -> String? {
        plainString().map { String(decoding: $0, as: UTF8.self) }
    }

    /// A non-negative JSON integer that fits in Int64.
    private mutating func count() -> Int64? {
        guard !scanner.atEnd, scanner.bytes[scanner.index] != UInt8(ascii: "-"),
            let number = try? scanner.scanNumber(), number.integer, number.range.count <= 18
        else { return nil }
        return number.range.reduce(Int64(0)) { $0 * 10 + Int64(scanner.bytes[$1] &- 48) }
    }
}
