import Crypto
import TallyPostgres

/// SHA-256 of a secret (API key, access token, redemption code), the only form stored.
/// Keys carry 286 bits of entropy, so an unsalted fast hash is enough to make a stolen table
/// useless while keeping the lookup an index probe.
public struct SecretHash: Sendable, Hashable, PostgresEncodable {
    public let bytes: [UInt8]

    public init(of secret: String) {
        bytes = Array(SHA256.hash(data: Array(secret.utf8)))
    }

    /// The digest's bytes in one call: the derived hash fed them to the hasher one at a time,
    /// on the key lookup of every ingested line.
    public func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    /// A hash given as 64 hex characters (LiteLLM's `user_api_key_hash` is SHA-256 hex).
    public init?(hex: String) {
        let digits = Array(hex.lowercased().utf8)
        guard digits.count == 64 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32)
        for index in stride(from: 0, to: 64, by: 2) {
            guard let high = hexValue(digits[index]), let low = hexValue(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
        }
        self.bytes = bytes
    }

    /// The hash as 64 lowercase hex characters.
    public var hex: String { String(postgresText!.dropFirst(2)) }

    /// `bytea` in PostgreSQL's hex input format.
    public var postgresText: String? {
        var text = "\\x"
        text.reserveCapacity(2 + bytes.count * 2)
        for byte in bytes {
            text.append(hexDigits[Int(byte >> 4)])
            text.append(hexDigits[Int(byte & 0x0f)])
        }
        return text
    }
}

private let hexDigits = Array("0123456789abcdef")

private func hexValue(_ digit: UInt8) -> UInt8? {
    switch digit {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
    default: nil
    }
}
