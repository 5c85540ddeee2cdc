/// Credentials as clients send them: `Authorization: Bearer <value>` (the scheme in any case,
/// spaces and tabs around it ignored). Byte-level, since it runs on every gateway call and every
/// ingested line's key: walked by `Character`, the key's grapheme breaking cost a tenth of the
/// server's CPU per ingested line.
public enum BearerCredential {
    /// The value of an `Authorization` header, without a `Bearer ` scheme; nil when empty.
    public static func value(of header: String) -> Substring? {
        var value = trimmed(Substring(header))
        if value.utf8.count >= 7, value.utf8.prefix(7).elementsEqual("bearer ".utf8, by: { ($0 | 0x20) == $1 }) {
            value = trimmed(value[value.utf8.index(value.startIndex, offsetBy: 7)...])
        }
        return value.isEmpty ? nil : value
    }

    /// `text` without leading and trailing spaces and tabs.
    public static func trimmed(_ text: Substring) -> Substring {
        let bytes = text.utf8
        let isBlank = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        guard let first = bytes.firstIndex(where: { !isBlank($0) }) else { return text[text.endIndex...] }
        var end = bytes.endIndex
        while isBlank(bytes[bytes.index(before: end)]) { end = bytes.index(before: end) }
        // Both ends sit next to an ASCII byte or the text's ends: whole scalars.
        return text[first..<end]
    }
}
