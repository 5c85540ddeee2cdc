/// Masks the API keys in a log line that is kept as written (a rejected line, `ingest_rejects.raw`):
/// admins read those lines, and a key is shown whole only once, to its owner (DESIGN §7). Each
/// key becomes its display form, `sk-…` + its last 6 characters (``Secrets/maskedKey(last6:)``),
/// so the operator still sees which key a line named. Masked are: the string value of every
/// `"key"` member (the gateway's field, `sk-` or not), every `Bearer` token (a header copied into
/// metadata) and every other `sk-` key, wherever it stands. Migration 0029 applies the same rules
/// to the rows stored before.
///
/// Works on the bytes, since a rejected line need not be valid JSON. Masking an already masked
/// line changes nothing.
public enum KeyRedaction {
    /// Fewest characters after the prefix for something to be masked: 7 keeps 6 and hides one.
    static let minimumSecret = 7

    public static func masked(_ line: some Collection<UInt8>) -> [UInt8] {
        let bytes = Array(line)
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = 0
        while index < bytes.count {
            if let end = maskKeyMember(bytes, at: index, into: &output) {
                index = end
            } else if let end = maskBearer(bytes, at: index, into: &output) {
                index = end
            } else if let end = maskPrefixedKey(bytes, at: index, into: &output) {
                index = end
            } else {
                output.append(bytes[index])
                index += 1
            }
        }
        return output
    }

    private static let keyMember = Array(#""key""#.utf8)
    private static let skPrefix = Array("sk-".utf8)
    private static let bearer = Array("bearer".utf8)
    private static let ellipsis = Array("\u{2026}".utf8)

    /// `"key"`, optional spaces, `:`, optional spaces, then a string without escapes: its value masked.
    private static func maskKeyMember(_ bytes: [UInt8], at start: Int, into output: inout [UInt8]) -> Int? {
        guard matches(keyMember, in: bytes, at: start, ignoringCase: false) else { return nil }
        var index = skipSpaces(bytes, from: start + keyMember.count)
        guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { return nil }
        index = skipSpaces(bytes, from: index + 1)
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return nil }
        let valueStart = index + 1
        var valueEnd = valueStart
        while valueEnd < bytes.count, bytes[valueEnd] != UInt8(ascii: "\"") {
            guard bytes[valueEnd] != UInt8(ascii: "\\") else { return nil }
            valueEnd += 1
        }
        guard valueEnd < bytes.count else { return nil }
        let value = Array(bytes[valueStart..<valueEnd])
        let prefix = value.starts(with: skPrefix) ? skPrefix : []
        guard value.count - prefix.count >= minimumSecret else { return nil }
        output += bytes[start..<valueStart]
        output += prefix + ellipsis + value.suffix(6)
        output.append(UInt8(ascii: "\""))
        return valueEnd + 1
    }

    /// `Bearer` (any case), spaces, then a token up to a space, quote or backslash: the token masked.
    private static func maskBearer(_ bytes: [UInt8], at start: Int, into output: inout [UInt8]) -> Int? {
        guard matches(bearer, in: bytes, at: start, ignoringCase: true) else { return nil }
        let tokenStart = skipSpaces(bytes, from: start + bearer.count)
        guard tokenStart > start + bearer.count else { return nil }
        var tokenEnd = tokenStart
        while tokenEnd < bytes.count, !bytes[tokenEnd].isJSONWhitespace, bytes[tokenEnd] != UInt8(ascii: "\""),
            bytes[tokenEnd] != UInt8(ascii: "\\")
        {
            tokenEnd += 1
        }
        guard tokenEnd - tokenStart >= minimumSecret else { return nil }
        output += bytes[start..<tokenStart] + ellipsis + bytes[(tokenEnd - 6)..<tokenEnd]
        return tokenEnd
    }

    /// `sk-` not inside a longer word, then key characters: them masked.
    private static func maskPrefixedKey(_ bytes: [UInt8], at start: Int, into output: inout [UInt8]) -> Int? {
        guard matches(skPrefix, in: bytes, at: start, ignoringCase: false),
            start == 0 || !isKeyCharacter(bytes[start - 1])
        else { return nil }
        var end = start + skPrefix.count
        while end < bytes.count, isKeyCharacter(bytes[end]) { end += 1 }
        guard end - start - skPrefix.count >= minimumSecret else { return nil }
        output += skPrefix + ellipsis + bytes[(end - 6)..<end]
        return end
    }

    private static func matches(_ word: [UInt8], in bytes: [UInt8], at start: Int, ignoringCase: Bool) -> Bool {
        guard start + word.count <= bytes.count else { return false }
        for offset in 0..<word.count {
            let byte = bytes[start + offset]
            guard byte == word[offset] || (ignoringCase && byte | 0x20 == word[offset]) else { return false }
        }
        return true
    }

    private static func skipSpaces(_ bytes: [UInt8], from start: Int) -> Int {
        var index = start
        while index < bytes.count, bytes[index].isJSONWhitespace { index += 1 }
        return index
    }

    /// The characters of keys as Tally and new-api make them, and of `_`/`-` separated variants.
    private static func isKeyCharacter(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
            || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
            || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: "_")
            || byte == UInt8(ascii: "-")
    }
}
