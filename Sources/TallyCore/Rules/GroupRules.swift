/// The rules of the group table's fields.
public enum GroupRules {
    /// The schema's rule: 1–64 of `[A-Za-z0-9_.-]`.
    public static func isValidName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count)
            && name.utf8.allSatisfy {
                ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 95 || $0 == 46
                    || $0 == 45
            }
    }

    public static func checkName(_ name: String) throws(RuleViolation) {
        guard isValidName(name) else {
            throw RuleViolation(
                "name must be 1–64 characters of letters, digits, '_', '.' or '-', got \"\(name.prefix(64))\"")
        }
    }

    /// The group a user, key or channel is put in.
    public static func checkMember(_ group: String) throws(RuleViolation) {
        guard isValidName(group) else { throw RuleViolation("group \"\(group.prefix(64))\" is not a valid group name") }
    }

    public static func checkDescription(_ description: String) throws(RuleViolation) {
        guard description.count <= 500 else { throw RuleViolation("description is longer than 500 characters") }
        try TextRules.check(description, field: "description", multiline: true)
    }

    public static func checkRPM(_ rpm: Int?, field: String = "rpm_limit") throws(RuleViolation) {
        if let rpm, rpm <= 0 || rpm > 1_000_000_000 {
            throw RuleViolation("\(field) must be a positive whole number (or null for no limit), got \(rpm)")
        }
    }
}
