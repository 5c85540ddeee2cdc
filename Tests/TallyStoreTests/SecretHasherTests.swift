import TallyStore
import Testing

/// The stored form of keys and tokens: SHA-256 of the secret's UTF-8 bytes, the same digest
/// PostgreSQL's `sha256()` and LiteLLM's `user_api_key_hash` give. No database.
@Suite("secret hashes")
struct SecretHasherTests {
    @Test(
        "the digest is SHA-256 of the UTF-8 bytes",
        arguments: [
            ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            ("sk-ключ-🔑", "966a5f2d8bb9bee236b9140b790ef9218d163b5a649d310efa8eb4d2a94b5163"),
        ])
    func knownDigests(secret: String, hex: String) throws {
        let hash = SecretHash(of: secret)
        #expect(hash.hex == hex)
        #expect(hash.bytes.count == 32)
        #expect(hash.postgresText == "\\x" + hex)
        #expect(try #require(SecretHash(hex: hex)) == hash)
        #expect(try #require(SecretHash(hex: hex.uppercased())) == hash)
    }

    @Test("hex input must be 64 hex digits")
    func malformedHex() {
        let hex = SecretHash(of: "abc").hex
        #expect(SecretHash(hex: String(hex.dropLast())) == nil)
        #expect(SecretHash(hex: hex + "0") == nil)
        #expect(SecretHash(hex: String(hex.dropLast()) + "g") == nil)
    }

    /// The dictionary hash reads one word of the digest; equality must still see all 32 bytes.
    @Test("hashes that share their first eight bytes stay distinct keys")
    func equalityComparesTheWholeDigest() throws {
        let base = SecretHash(of: "abc").hex
        let sameFirstWord = try #require(SecretHash(hex: String(base.prefix(16)) + String(repeating: "0", count: 48)))
        let lastByteDiffers = try #require(SecretHash(hex: String(base.dropLast(2)) + "00"))
        let original = try #require(SecretHash(hex: base))
        #expect(sameFirstWord != original)
        #expect(lastByteDiffers != original)
        #expect(sameFirstWord.hashValue == original.hashValue)
        #expect(Set([original, sameFirstWord, lastByteDiffers, SecretHash(of: "abc")]).count == 3)
        let owners = [original: "a", lastByteDiffers: "b"]
        #expect(owners[SecretHash(of: "abc")] == "a")
        #expect(owners[lastByteDiffers] == "b")
    }
}
