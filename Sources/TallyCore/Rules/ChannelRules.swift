import Foundation

/// The rules of a channel's fields.
public enum ChannelRules {
    public static func checkName(_ name: String) throws(RuleViolation) {
        guard !name.trimmingCharacters(in: .whitespaces).isEmpty else { throw RuleViolation("name is required") }
        guard name.count <= 200 else { throw RuleViolation("name is longer than 200 characters") }
        try TextRules.check(name, field: "name")
    }

    /// The group names, trimmed, without blanks or repeats; at least one.
    public static func normalizedGroups(_ groups: [String]) throws(RuleViolation) -> [String] {
        var result: [String] = []
        for raw in groups {
            let group = raw.trimmingCharacters(in: .whitespaces)
            if group.isEmpty { continue }
            try GroupRules.checkMember(group)
            if !result.contains(group) { result.append(group) }
        }
        guard !result.isEmpty else { throw RuleViolation("group must name at least one group") }
        return result
    }

    public static func normalizedModels(_ models: [String]) throws(RuleViolation) -> [String] {
        do { return try ModelNames.validate(models, field: "models") } catch { throw RuleViolation(error.message) }
    }
}
