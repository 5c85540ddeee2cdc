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
