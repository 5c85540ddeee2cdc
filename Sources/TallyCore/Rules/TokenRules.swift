import Foundation

/// The rules every API key field obeys, shared by the System API, `tally admin create-key` and
/// the import.
public enum TokenRules {
    /// new-api's limit (bytes of UTF-8).
    public static let maximumNameBytes = 50
    /// new-api's `MaxUserTokens`.
    public static let maximumTokensPerUser = 1000
    /// 9999-12-31T23:59:59Z.
    public static let latestExpiry: Int64 = 253_402_300_799

    public static func checkName(_ name: String) throws(RuleViolation) {
        guard name.utf8.count <= maximumNameBytes else {
            throw RuleViolation("name is too long: at most \(maximumNameBytes) bytes, got \(name.utf8.count)")
        }
        try TextRules.check(name, field: "name")
    }

    /// How long a key stays usable past its `expired_time`: new-api compares that second with the
    /// current unix second (`ExpiredTime < now`), so a key works through the whole second it
    /// names. The store's SQL uses it too (`SQL.expiryPassed`).
    public static let expiryGraceSeconds = 1

    /// True when a key with this expiry may no longer be used at `now`.
    public static func hasExpired(_ expiresAt: Date, now: Date) -> Bool {
        now >= expiresAt.addingTimeInterval(TimeInterval(expiryGraceSeconds))
    }

    public static func checkExpiry(_ expiredTime: Int64, now: Int64) throws(RuleViolation) {
        guard expiredTime != -1 else { return }
        guard expiredTime > 0, expiredTime <= latestExpiry else {
            throw RuleViolation(
                "expired_time must be -1 (never expires) or a unix time in seconds, got \(expiredTime)")
        }
        guard expiredTime > now else {
            throw RuleViolation(
                "expired_time \(expiredTime) is in the past; use a future unix time in seconds, or -1 for never")
        }
    }

    /// A quota within 0…`QuotaLimits.maximum`; on an `unlimited` key, whose `remain_quota` only
    /// counts down and is never checked, also a negative one (new-api checks limited keys only,
    /// and its unlimited keys, imported as they are, often hold one).
    public static func checkQuota(_ quota: Int64, field: String = "remain_quota", unlimited: Bool = false)
        throws(RuleViolation)
    {
        guard quota >= 0 || (unlimited && quota >= -QuotaLimits.maximum) else {
            throw RuleViolation("\(field) cannot be negative, got \(quota)")
        }
        guard quota <= QuotaLimits.maximum else {
            throw RuleViolation("\(field) exceeds the maximum of \(QuotaLimits.maximum) units, got \(quota)")
        }
    }

    /// Comma-separated model names, checked and joined without blanks or repeats.
    public static func normalizedModelLimits(_ text: String) throws(RuleViolation) -> String {
        do { return try ModelNames.parseList(text, field: "model_limits").joined(separator: ",") } catch {
            throw RuleViolation(error.message)
        }
    }

    /// An IP allow-list in its canonical text (one CIDR a line; "" = any address).
    public static func normalizedAllowIPs(_ text: String) throws(RuleViolation) -> String {
        do { return try IPAllowList.parse(text).text } catch { throw RuleViolation(error.description) }
    }

    /// A key's group: "" (the owner's group) or a valid group name.
    public static func checkGroupName(_ group: String) throws(RuleViolation) {
        guard group.isEmpty else { return try GroupRules.checkMember(group) }
    }
}
