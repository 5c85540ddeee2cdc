/// The rules every account field obeys, shared by the System API and `tally admin`.
public enum AccountRules {
    public static func checkUsername(_ username: String) throws(RuleViolation) {
        guard !username.isEmpty else { throw RuleViolation("username is required") }
        // Code points, as the table's CHECK (length) counts them: a longer one failed the insert (500).
        guard username.unicodeScalars.count <= 64 else {
            throw RuleViolation("username is longer than 64 characters")
        }
        guard
            !username.unicodeScalars.contains(where: {
                $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7f
            })
        else { throw RuleViolation("username must not contain spaces or control characters") }
    }

    public static func checkDisplayName(_ name: String) throws(RuleViolation) {
        guard name.count <= 64 else { throw RuleViolation("display_name is longer than 64 characters") }
        try TextRules.check(name, field: "display_name")
    }

    /// Empty, or one `@` with a dotted domain, no spaces, at most 254 characters.
    public static func checkEmail(_ email: String) throws(RuleViolation) {
        guard !email.isEmpty else { return }
        let parts = email.split(separator: "@", omittingEmptySubsequences: false)
        guard email.count <= 254, parts.count == 2, !parts[0].isEmpty, parts[1].contains("."),
            !email.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 })
        else { throw RuleViolation("email \"\(email.prefix(64))\" is not a valid email address") }
    }
}
