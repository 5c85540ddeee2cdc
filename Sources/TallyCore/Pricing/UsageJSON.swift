/// Why a usage object could not be read by ``Usage/parseJSON(_:)-(UnsafeBufferPointer<UInt8>)``.
public struct UsageParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Byte offset of the problem in the input.
    public let offset: Int
    /// What is wrong, e.g. `prompt_tokens: negative value -5`.
    public let message: String

    /// Creates an error.
    public init(offset: Int, message: String) {
        self.offset = offset
        self.message = message
    }

    /// `usage: prompt_tokens: negative value -5 (at byte 17)`.
    public var description: String { "usage: \(message) (at byte \(offset))" }
}

extension Usage {
    /// Reads a usage object from its JSON text (UTF-8), exactly and without Foundation.
    ///
    /// The input must be one JSON object (whitespace around it is fine). Counts must be JSON
    /// integers ≥ 0 that fit in `Int64`; `video_seconds` and `predict_time` are JSON numbers
    /// (or decimal strings) ≥ 0 read exactly from their text (exponent allowed, at most 12
    /// fractional digits); `size`, `quality`, `resolution` are strings or `null` (an empty
    /// string counts as `null`). Unknown keys are skipped whatever their value; a repeated key
    /// keeps its last value. Runs in one pass with no allocation except for the strings kept.
    public static func parseJSON(_ utf8: UnsafeBufferPointer<UInt8>) throws(UsageParseError) -> Usage {
        var scanner = JSONScanner(bytes: utf8)
        scanner.skipWhitespace()
        let usage = try scanner.readUsageObject()
        scanner.skipWhitespace()
        guard scanner.atEnd else { throw scanner.error("unexpected text after the usage object") }
        return usage
    }

    /// Reads the usage object that starts at byte `offset` (leading whitespace allowed) inside a
    /// larger JSON text, such as a whole log line whose own scanner has reached the value of
    /// `"usage"`; returns it with the offset just past its closing `}`. Same rules as
    /// ``parseJSON(_:)-(UnsafeBufferPointer<UInt8>)``; error offsets are relative to `utf8`.
    public static func parseJSONObject(_ utf8: UnsafeBufferPointer<UInt8>, at offset: Int)
        throws(UsageParseError) -> (usage: Usage, end: Int)
    {
        var scanner = JSONScanner(bytes: utf8)
        scanner.index = max(0, min(offset, utf8.count))
        scanner.skipWhitespace()
        let usage = try scanner.readUsageObject()
        return (usage, scanner.index)
    }

    /// Reads a usage object from JSON text; see ``parseJSON(_:)-(UnsafeBufferPointer<UInt8>)``.
    public static func parseJSON(_ text: String) throws(UsageParseError) -> Usage {
        var copy = text
        let result: Result<Usage, UsageParseError> = copy.withUTF8 { buffer in
            do throws(UsageParseError) { return .success(try parseJSON(buffer)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Reads a usage object from JSON bytes; see ``parseJSON(_:)-(UnsafeBufferPointer<UInt8>)``.
    public static func parseJSON(_ bytes: [UInt8]) throws(UsageParseError) -> Usage {
        let result: Result<Usage, UsageParseError> = bytes.withUnsafeBufferPointer { buffer in
            do throws(UsageParseError) { return .success(try parseJSON(buffer)) } catch { return .failure(error) }
        }
        return try result.get()
    }
}

/// A minimal strict JSON reader over UTF-8 bytes (RFC 8259), enough for the usage object.
struct JSONScanner {
    let bytes: UnsafeBufferPointer<UInt8>
    var index = 0
    var depth = 0

    var atEnd: Bool { index >= bytes.count }

    func error(_ message: String) -> UsageParseError { UsageParseError(offset: index, message: message) }

    mutating func skipWhitespace() {
        while index < bytes.count, bytes[index].isJSONWhitespace { index += 1 }
    }

    mutating func expect(_ byte: UInt8, _ what: String) throws(UsageParseError) {
        guard index < bytes.count, bytes[index] == byte else { throw error("expected \(what)") }
        index += 1
    }

    mutating func readUsageObject() throws(UsageParseError) -> Usage {
        var usage = Usage()
        try expect(UInt8(ascii: "{"), "\"{\" to start the usage object")
        skipWhitespace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            return usage
        }
        while true {
            skipWhitespace()
            let key = try readKeyRange()
            skipWhitespace()
            try expect(UInt8(ascii: ":"), "\":\" after a key")
            skipWhitespace()
            try readField(key, into: &usage)
            skipWhitespace()
            guard index < bytes.count else { throw error("unterminated object") }
            if bytes[index] == UInt8(ascii: ",") {
                index += 1
                continue
            }
            try expect(UInt8(ascii: "}"), "\",\" or \"}\"")
            return usage
        }
    }

    /// Which usage field a key names (compared on its bytes; a key written with escapes, which
    /// no usual writer emits, is decoded first: skipped as unknown, its count went unbilled
    /// where authorize's JSONDecoder read it).
    enum Field {
        case promptTokens, completionTokens, cachedTokens, cacheWriteTokens, audioInputTokens,
            audioOutputTokens, images, size, quality, videoSeconds, resolution, calls, predictTime, unknown
    }

    mutating func readKeyRange() throws(UsageParseError) -> Field {
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a key string") }
        let start = index
        var hasEscape = false
        try skipString(hasEscape: &hasEscape)
        guard hasEscape else { return Self.field(UnsafeBufferPointer(rebasing: bytes[(start + 1)..<(index - 1)])) }
        index = start
        var decoded = try readString()
        return decoded.withUTF8 { Self.field($0) }
    }

    static func field(_ key: UnsafeBufferPointer<UInt8>) -> Field {
        func equals(_ literal: StaticString) -> Bool {
            guard literal.utf8CodeUnitCount == key.count else { return false }
            let pointer = literal.utf8Start
            for offset in 0..<key.count where pointer[offset] != key[offset] { return false }
            return true
        }
        switch key.count {
        case 4: if equals("size") { return .size }
        case 5: if equals("calls") { return .calls }
        case 6: if equals("images") { return .images }
        case 7: if equals("quality") { return .quality }
        case 10: if equals("resolution") { return .resolution }
        case 12: if equals("predict_time") { return .predictTime }
        case 13:
            if equals("prompt_tokens") { return .promptTokens }
            if equals("cached_tokens") { return .cachedTokens }
            if equals("video_seconds") { return .videoSeconds }
        case 17: if equals("completion_tokens") { return .completionTokens }
        case 18:
            if equals("cache_write_tokens") { return .cacheWriteTokens }
            if equals("audio_input_tokens") { return .audioInputTokens }
        case 19: if equals("audio_output_tokens") { return .audioOutputTokens }
        default: break
        }
        return .unknown
    }

    mutating func readField(_ field: Field, into usage: inout Usage) throws(UsageParseError) {
        switch field {
        case .promptTokens: usage.promptTokens = try readCount("prompt_tokens")
        case .completionTokens: usage.completionTokens = try readCount("completion_tokens")
        case .cachedTokens: usage.cachedTokens = try readCount("cached_tokens")
        case .cacheWriteTokens: usage.cacheWriteTokens = try readCount("cache_write_tokens")
        case .audioInputTokens: usage.audioInputTokens = try readCount("audio_input_tokens")
        case .audioOutputTokens: usage.audioOutputTokens = try readCount("audio_output_tokens")
        case .images: usage.images = try readCount("images")
        case .calls: usage.calls = try readCount("calls")
        case .size: usage.size = try readOptionalString("size")
        case .quality: usage.quality = try readOptionalString("quality")
        case .resolution: usage.resolution = try readOptionalString("resolution")
        case .videoSeconds: usage.videoSeconds = try readDecimal("video_seconds")
        case .predictTime: usage.predictTime = try readDecimal("predict_time")
        case .unknown: try skipValue()
        }
    }

    mutating func readNull() -> Bool {
        guard bytes.count - index >= 4, bytes[index] == UInt8(ascii: "n"), bytes[index + 1] == UInt8(ascii: "u"),
            bytes[index + 2] == UInt8(ascii: "l"), bytes[index + 3] == UInt8(ascii: "l")
        else { return false }
        index += 4
        return true
    }

    /// Scans a JSON number and returns its byte range; `integer` tells whether it had no
    /// fraction and no exponent.
    mutating func scanNumber() throws(UsageParseError) -> (range: Range<Int>, integer: Bool) {
        let start = index
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.count, DecimalScanner.isDigit(bytes[index]) else { throw error("expected a number") }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
            if index < bytes.count, DecimalScanner.isDigit(bytes[index]) { throw error("leading zero in a number") }
        } else {
            while index < bytes.count, DecimalScanner.isDigit(bytes[index]) { index += 1 }
        }
        var integer = true
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            integer = false
            index += 1
            let digits = index
            while index < bytes.count, DecimalScanner.isDigit(bytes[index]) { index += 1 }
            guard index > digits else { throw error("expected a digit after the point") }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            integer = false
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
                index += 1
            }
            let digits = index
            while index < bytes.count, DecimalScanner.isDigit(bytes[index]) { index += 1 }
            guard index > digits else { throw error("expected a digit in the exponent") }
        }
        return (start..<index, integer)
    }

    mutating func readCount(_ name: String) throws(UsageParseError) -> Int64 {
        if readNull() { return 0 }
        let start = index
        let (range, integer) = try scanNumber()
        guard integer else {
            index = start
            throw error("\(name): must be an integer")
        }
        if bytes[range.lowerBound] == UInt8(ascii: "-") {
            let negativeZero = range.count == 2 && bytes[range.lowerBound + 1] == UInt8(ascii: "0")
            if !negativeZero {
                index = start
                throw error(
                    "\(name): negative value \(String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self))"
                )
            }
            return 0
        }
        var value: Int64 = 0
        for position in range {
            let (times10, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(Int64(bytes[position] &- 48))
            if overflow1 || overflow2 {
                index = start
                throw error("\(name): too large")
            }
            value = sum
        }
        return value
    }

    mutating func readDecimal(_ name: String) throws(UsageParseError) -> ExactDecimal {
        if readNull() { return .zero }
        let start = index
        let range: Range<Int>
        if index < bytes.count, bytes[index] == UInt8(ascii: "\"") {
            var hasEscape = false
            try skipString(hasEscape: &hasEscape)
            range = (start + 1)..<(index - 1)
            if hasEscape {
                index = start
                throw error("\(name): not a decimal")
            }
        } else {
            range = try scanNumber().range
        }
        let value: ExactDecimal
        do {
            value = try ExactDecimal(jsonUTF8: UnsafeBufferPointer(rebasing: bytes[range]))
        } catch {
            index = start
            throw self.error("\(name): \(error.description)")
        }
        if value.isNegative {
            index = start
            throw error("\(name): negative value \(value)")
        }
        return value
    }

    mutating func readOptionalString(_ name: String) throws(UsageParseError) -> String? {
        if readNull() { return nil }
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else {
            throw error("\(name): expected a string or null")
        }
        let text = try readString()
        return text.isEmpty ? nil : text
    }

    /// Skips a string starting at the opening quote; reports whether it contained escapes.
    /// Escapes are checked (RFC 8259 §7) even in strings that are skipped, so no invalid JSON
    /// passes for valid.
    mutating func skipString(hasEscape: inout Bool) throws(UsageParseError) {
        index += 1
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                index += 1
                return
            }
            if byte == UInt8(ascii: "\\") {
                hasEscape = true
                try skipEscape()
                continue
            }
            if byte < 0x20 { throw error("control character in a string") }
            index += 1
        }
        throw error("unterminated string")
    }

    /// Skips one escape sequence (`\n`, `\u00e9` …) starting at its backslash.
    private mutating func skipEscape() throws(UsageParseError) {
        guard index + 1 < bytes.count else { throw error("unterminated string") }
        switch bytes[index + 1] {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
            UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
            index += 2
        case UInt8(ascii: "u"):
            guard index + 6 <= bytes.count, bytes[(index + 2)..<(index + 6)].allSatisfy(Self.isHexDigit) else {
                throw error("bad \\u escape in a string")
            }
            index += 6
        default: throw error("bad escape in a string")
        }
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"),
            UInt8(ascii: "A")...UInt8(ascii: "F"):
            true
        default: false
        }
    }

    /// Reads a string starting at the opening quote, decoding escapes.
    mutating func readString() throws(UsageParseError) -> String {
        let start = index
        var hasEscape = false
        try skipString(hasEscape: &hasEscape)
        let raw = UnsafeBufferPointer(rebasing: bytes[(start + 1)..<(index - 1)])
        // Text that is not UTF-8 is refused, not repaired: repaired, two request ids that
        // differ only in their invalid bytes would read as one (JSONDecoder refuses them too).
        let invalid = UsageParseError(offset: start, message: "invalid UTF-8 in a string")
        if !hasEscape {
            // ASCII needs no validation, and `String(validating:as:)` looks its generic
            // metadata up on every call (a tenth of the server's CPU per ingested line).
            if raw.allSatisfy({ $0 < 0x80 }) { return String(decoding: raw, as: UTF8.self) }
            guard let text = String(validating: raw, as: UTF8.self) else { throw invalid }
            return text
        }
        var scalars = String.UnicodeScalarView()
        var position = 0
        var utf8Run: [UInt8] = []
        func flush() throws(UsageParseError) {
            if !utf8Run.isEmpty {
                guard let text = String(validating: utf8Run, as: UTF8.self) else { throw invalid }
                scalars.append(contentsOf: text.unicodeScalars)
                utf8Run.removeAll(keepingCapacity: true)
            }
        }
        func hex4(_ at: Int) -> UInt32? {
            guard at + 4 <= raw.count else { return nil }
            var value: UInt32 = 0
            for offset in 0..<4 {
                let byte = raw[at + offset]
                let digit: UInt32
                switch byte {
                case 48...57: digit = UInt32(byte - 48)
                case 65...70: digit = UInt32(byte - 55)
                case 97...102: digit = UInt32(byte - 87)
                default: return nil
                }
                value = value << 4 | digit
            }
            return value
        }
        while position < raw.count {
            let byte = raw[position]
            guard byte == UInt8(ascii: "\\") else {
                utf8Run.append(byte)
                position += 1
                continue
            }
            guard position + 1 < raw.count else {
                throw UsageParseError(offset: start, message: "bad escape in a string")
            }
            let escaped = raw[position + 1]
            position += 2
            switch escaped {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8Run.append(escaped)
            case UInt8(ascii: "b"): utf8Run.append(0x08)
            case UInt8(ascii: "f"): utf8Run.append(0x0C)
            case UInt8(ascii: "n"): utf8Run.append(0x0A)
            case UInt8(ascii: "r"): utf8Run.append(0x0D)
            case UInt8(ascii: "t"): utf8Run.append(0x09)
            case UInt8(ascii: "u"):
                guard var code = hex4(position) else {
                    throw UsageParseError(offset: start, message: "bad \\u escape in a string")
                }
                position += 4
                if (0xD800...0xDBFF).contains(code), position + 6 <= raw.count, raw[position] == UInt8(ascii: "\\"),
                    raw[position + 1] == UInt8(ascii: "u"), let low = hex4(position + 2),
                    (0xDC00...0xDFFF).contains(low)
                {
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    position += 6
                }
                try flush()
                guard let scalar = Unicode.Scalar(code) else {
                    throw UsageParseError(offset: start, message: "a \\u escape of half a surrogate pair in a string")
                }
                scalars.append(scalar)
            default: throw UsageParseError(offset: start, message: "bad escape in a string")
            }
        }
        try flush()
        return String(scalars)
    }

    /// Skips any JSON value (nesting limited to 64 levels).
    mutating func skipValue() throws(UsageParseError) {
        guard index < bytes.count else { throw error("expected a value") }
        switch bytes[index] {
        case UInt8(ascii: "\""):
            var hasEscape = false
            try skipString(hasEscape: &hasEscape)
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            let close = bytes[index] == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]")
            let isObject = close == UInt8(ascii: "}")
            depth += 1
            guard depth <= 64 else { throw error("nesting too deep") }
            index += 1
            skipWhitespace()
            if index < bytes.count, bytes[index] == close {
                index += 1
            } else {
                while true {
                    skipWhitespace()
                    if isObject {
                        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else {
                            throw error("expected a key string")
                        }
                        var hasEscape = false
                        try skipString(hasEscape: &hasEscape)
                        skipWhitespace()
                        try expect(UInt8(ascii: ":"), "\":\" after a key")
                        skipWhitespace()
                    }
                    try skipValue()
                    skipWhitespace()
                    guard index < bytes.count else { throw error("unterminated value") }
                    if bytes[index] == UInt8(ascii: ",") {
                        index += 1
                        continue
                    }
                    try expect(close, isObject ? "\",\" or \"}\"" : "\",\" or \"]\"")
                    break
                }
            }
            depth -= 1
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        default: _ = try scanNumber()
        }
    }

    mutating func literal(_ word: StaticString) throws(UsageParseError) {
        let count = word.utf8CodeUnitCount
        guard bytes.count - index >= count else { throw error("expected a value") }
        for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] {
            throw error("expected a value")
        }
        index += count
    }
}

extension UInt8 {
    /// JSON's insignificant whitespace: space, tab, line feed, carriage return.
    var isJSONWhitespace: Bool { self == 0x20 || self == 0x09 || self == 0x0A || self == 0x0D }
}
