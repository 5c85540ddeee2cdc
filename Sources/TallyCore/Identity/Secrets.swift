/// Generation and display of the secrets Tally hands out: API keys (`sk-…`), system access
/// tokens and redemption codes. Storage keeps only a hash (see TallyStore's `SecretHasher`).
public enum Secrets {
    private static let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)

    /// A new API key: `sk-` + 48 characters of `[0-9a-zA-Z]` from the system CSPRNG.
    public static func newAPIKey() -> String { "sk-" + randomString(count: 48) }

    /// A new system access token: 32 characters of `[0-9a-zA-Z]`.
    public static func newAccessToken() -> String { randomString(count: 32) }

    /// A new redemption code: 32 lowercase hex characters, as new-api's, straight from the
    /// system CSPRNG (not the tids' pool: a code is a secret).
    public static func newRedemptionCode() -> String {
        var generator = SystemRandomNumberGenerator()
        return TraceID.hex(generator.next(), generator.next())
    }

    /// The last six characters, kept for display and for the catalogue's `{last6}`.
    public static func last6(_ secret: String) -> String { String(secret.suffix(6)) }

    /// The tail to keep of a secret Tally did not make (an imported key, access token or code,
    /// which may be short, typed by hand): its last 6 characters when it is long enough that
    /// they say little, else at most a quarter of it — `test01` kept as its last 6 would be the
    /// secret itself, shown by every list and printed in warnings.
    public static func displayTail(_ secret: String) -> String {
        String(secret.suffix(secret.count >= 24 ? 6 : secret.count / 4))
    }

    /// The masked form shown after creation: `sk-…` + last 6.
    public static func maskedKey(last6: String) -> String { "sk-\u{2026}" + last6 }

    /// Uniform over the alphabet: rejection sampling avoids modulo bias.
    private static func randomString(count: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(count)
        while bytes.count < count {
            let byte = UInt8.random(in: 0...255, using: &generator)
            guard byte < 248 else { continue }  // 248 = 4 × 62
            bytes.append(alphabet[Int(byte) % alphabet.count])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
