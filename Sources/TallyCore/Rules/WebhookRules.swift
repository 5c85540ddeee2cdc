import Foundation

/// The events Tally sends to webhook endpoints (docs/webhooks.md).
public enum WebhookEventType: String, Sendable, CaseIterable, Codable {
    /// A debit took a balance from above the low-balance threshold to at or below it.
    case balanceLow = "balance.low"
    /// A debit took a balance from above 0 to 0 or below.
    case balanceExhausted = "balance.exhausted"
    /// An admin suspended (disabled) a user.
    case userSuspended = "user.suspended"
    /// An export or statement finished and can be fetched.
    case exportReady = "export.ready"
}

/// The rules of webhook endpoints: their URL and the event types they ask for.
public enum WebhookRules {
    public static func checkURL(_ url: String) throws(RuleViolation) {
        // As the table's CHECK reads it (`^https?://`, length in code points): a URL it refused
        // failed the insert, whose error carried the row, secret and all.
        guard url.unicodeScalars.count <= 2048,
            !url.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7f }),
            let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty,
            url.hasPrefix(scheme + "://")
        else {
            throw RuleViolation("a webhook URL must be an http:// or https:// URL with a host, at most 2048 characters")
        }
    }

    /// Event type names, comma-separated; empty means every type.
    public static func parseEvents(_ text: String) throws(RuleViolation) -> [WebhookEventType] {
        var types: [WebhookEventType] = []
        for name in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !name.isEmpty {
            guard let type = WebhookEventType(rawValue: name) else {
                let known = WebhookEventType.allCases.map(\.rawValue).joined(separator: ", ")
                throw RuleViolation("unknown event type \"\(name.prefix(40))\"; known: \(known)")
            }
            if !types.contains(type) { types.append(type) }
        }
        return types
    }
}
