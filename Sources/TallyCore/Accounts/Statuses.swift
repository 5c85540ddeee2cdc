// The statuses of accounts, keys, channels and redemption codes, with new-api's numbers (the
// System API's JSON and the database store the numbers).

/// An account's status.
public enum UserStatus: Int, Sendable, Codable {
    case enabled = 1
    /// Suspended: every credential of the account is refused.
    case disabled = 2
}

/// An API key's status as new-api reports it. Callers store only `enabled` or `disabled`; an
/// enabled key past its expiry reads `expired`, an enabled limited key with no quota left
/// reads `exhausted`.
public enum TokenStatus: Int, Sendable, Codable {
    case enabled = 1, disabled = 2, expired = 3, exhausted = 4

    /// A status a caller sent: 1–4 (a full update may echo the displayed 3 or 4 back).
    public static func parse(_ value: Int) throws(RuleViolation) -> TokenStatus {
        guard let status = TokenStatus(rawValue: value) else { throw refusal(value) }
        return status
    }

    /// Only these are requests; `expired` and `exhausted` are states.
    public var isSettable: Bool { self == .enabled || self == .disabled }

    /// The answer to a status a caller may not set.
    public static func refusal(_ value: Int) -> RuleViolation {
        RuleViolation("status must be 1 (enabled) or 2 (disabled), got \(value)")
    }
}

/// A channel's status.
public enum ChannelStatus: Int, Sendable, Codable {
    case enabled = 1, disabled = 2
    /// Disabled by new-api after upstream failures (imported as is).
    case autoDisabled = 3

    public static func parse(_ value: Int) throws(RuleViolation) -> ChannelStatus {
        guard let status = ChannelStatus(rawValue: value) else {
            throw RuleViolation("status must be 1 (enabled), 2 (disabled) or 3 (auto-disabled), got \(value)")
        }
        return status
    }
}

/// A redemption code's status.
public enum RedemptionStatus: Int, Sendable, Codable {
    case enabled = 1, disabled = 2, used = 3
}
