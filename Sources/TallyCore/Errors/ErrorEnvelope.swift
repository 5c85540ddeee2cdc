/// The two JSON shapes errors are answered in (DESIGN §7 and §6).
public enum ErrorEnvelope: Sendable {
    /// Gateway-facing routes (`/gateway/…`, `/v1/…`): `{"error":{"message","type","code","tid"}}`.
    case gateway
    /// System API routes (`/api/…`): `{"success":false,"message","code","tid"}`.
    case systemAPI

    /// The envelope for a request path: System API under `/api/`, gateway everywhere else.
    public static func forPath(_ path: String) -> ErrorEnvelope {
        firstSegment(of: path) == "api" ? .systemAPI : .gateway
    }

    /// The path's first segment as the router reads it: empty segments skipped, so `//api/x`
    /// is under `api` as it is routed.
    public static func firstSegment(of path: String) -> Substring? {
        path.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: true).first
    }

    /// The error body as UTF-8 JSON. Keys are in a fixed order so responses are byte-stable.
    public func body(for error: APIError, tid: String) -> String {
        let message = JSONText.quote(error.message)
        let code = JSONText.quote(error.code)
        let tid = JSONText.quote(tid)
        switch self {
        case .gateway:
            return #"{"error":{"message":\#(message),"type":"new_api_error","code":\#(code),"tid":\#(tid)}}"#
        case .systemAPI:
            return #"{"success":false,"message":\#(message),"code":\#(code),"tid":\#(tid)}"#
        }
    }
}

/// Minimal JSON string quoting for hand-built bodies (RFC 8259 escapes, UTF-8 kept as is).
public enum JSONText {
    public static func quote(_ text: String) -> String {
        // Most texts (every catalog message, code and tid) need no escape: copied whole.
        guard text.utf8.contains(where: needsEscape) else { return "\"" + text + "\"" }
        var output = "\""
        output.reserveCapacity(text.utf8.count + 2)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                output += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: output.unicodeScalars.append(scalar)
            }
        }
        return output + "\""
    }

    private static func needsEscape(_ byte: UInt8) -> Bool {
        byte < 0x20 || byte == 0x7F || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\")
    }
}
