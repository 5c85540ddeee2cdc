/// Credentials as clients send them: `Authorization: Bearer <value>` (the scheme in any case,
/// spaces and tabs around it ignored). Byte-level, since it runs on every gateway call.
public enum BearerCredential {
    /// The value of an `Authorization` header, without a `Bearer ` scheme; nil when empty.
    public static func value(of header: String) -> Substring? {
        var value = trimmed(Substring(header))
        if value.utf8.count >= 7, value.utf8.prefix(7).elementsEqual("bearer ".utf8, by: { ($0 | 0x20) == $1 }) {
            value = trimmed(value.dropFirst(7))
        }
        return value.isEmpty ? nil : value
    }

    /// `text` without leading and trailing spaces and tabs.
    public static func trimmed(_ text: Substring) -> Substring {
        let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = text.firstIndex(where: { !isBlank($0) }), let last = text.lastIndex(where: { !isBlank($0) })
        else {
            return text[text.endIndex...]
        }
        return text[first...last]
    }
}
