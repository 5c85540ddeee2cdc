import Crypto
import TallyPostgres

/// SHA-256 of a secret (API key, access token, redemption code), the only form stored.
/// Keys carry 286 bits of entropy, so an unsalted fast hash is enough to make a stolen table
/// useless while keeping the lookup an index probe.
public struct SecretHash: Sendable, Hashable, PostgresEncodable {
    /// The digest's 32 bytes as four words, kept inline: every ingested line's key is hashed and
    /// looked up, and a digest in an array cost two heap allocations, a copy byte by byte and a
    /// 32-byte hash per line.
    private let digest: SIMD4<UInt64>

    public init(of secret: String) {
        var secret = secret
        var hasher = SHA256()
        secret.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        digest = hasher.finalize().withUnsafeBytes { $0.loadUnaligned(as: SIMD4<UInt64>.self) }
    }

    private init(bytes: [UInt8]) {
        digest = bytes.withUnsafeBytes { $0.loadUnaligned(as: SIMD4<UInt64>.self) }
    }

    /// The digest's bytes.
    public var bytes: [UInt8] { withUnsafeBytes(of: digest) { Array($0) } }

    /// One word is enough to spread the dictionary buckets: the digest's bits are uniform.
    /// Equality still compares all four words.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(digest[0])
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
        self.init(bytes: bytes)
    }

    /// The hash as 64 lowercase hex characters.
    public var hex: String { String(postgresText!.dropFirst(2)) }

    /// `bytea` in PostgreSQL's hex input format.
    public var postgresText: String? {
        let bytes = bytes
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
