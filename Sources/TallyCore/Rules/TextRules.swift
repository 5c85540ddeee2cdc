/// Free text from callers: PostgreSQL text cannot hold NUL, and names must not hide control
/// characters; descriptions and reasons may span lines.
public enum TextRules {
    public static func check(_ text: String, field: String, multiline: Bool = false) throws(RuleViolation) {
        let bad = text.unicodeScalars.contains { scalar in
            scalar.value == 0x7f
                || (scalar.value < 0x20 && !(multiline && (scalar == "\n" || scalar == "\t" || scalar == "\r")))
        }
        guard !bad else { throw RuleViolation("\(field) must not contain control characters") }
    }
}

/// Limits of quota amounts accepted from callers: 10^15 units is 2 billion USD.
public enum QuotaLimits {
    public static let maximum: Int64 = 1_000_000_000_000_000
}
