import Foundation
import TallyCore
import Testing

/// The rules every field of accounts, keys, groups, channels and webhooks obeys, database-free.
@Suite("Rules")
struct RuleTests {
    @Test("text: control characters are refused, line breaks and tabs only where multiline")
    func text() throws {
        try TextRules.check("plain text, with ünïcode", field: "name")
        try TextRules.check("two\nlines\tand\r\n", field: "description", multiline: true)
        for bad in ["a\u{0}b", "a\u{7f}", "\u{1b}[31m"] {
            #expect(throws: RuleViolation("name must not contain control characters")) {
                try TextRules.check(bad, field: "name", multiline: true)
            }
        }
        #expect(throws: RuleViolation("reason must not contain control characters")) {
            try TextRules.check("a\nb", field: "reason")
        }
    }

    @Test("accounts: username, display name and email")
    func accounts() throws {
        try AccountRules.checkUsername("alice_01")
        try AccountRules.checkUsername(String(repeating: "é", count: 64))
        #expect(throws: RuleViolation("username is required")) { try AccountRules.checkUsername("") }
        #expect(throws: RuleViolation("username is longer than 64 characters")) {
            try AccountRules.checkUsername(String(repeating: "a", count: 65))
        }
        // 40 characters of 80 code points: PostgreSQL's length() counts the code points.
        #expect(throws: RuleViolation("username is longer than 64 characters")) {
            try AccountRules.checkUsername(String(repeating: "\u{1F1FA}\u{1F1F8}", count: 40))
        }
        for bad in ["al ice", "al\tice", "al\u{7f}", "a\u{2003}b"] {
            #expect(throws: RuleViolation("username must not contain spaces or control characters")) {
                try AccountRules.checkUsername(bad)
            }
        }
        try AccountRules.checkDisplayName("Alice Liddell")
        #expect(throws: RuleViolation("display_name must not contain control characters")) {
            try AccountRules.checkDisplayName("A\nB")
        }
        for good in ["", "a@b.co", "first.last+tag@mail.example.org"] { try AccountRules.checkEmail(good) }
        for bad in ["a", "a@b", "@b.co", "a@@b.co", "a b@c.de", "a@b.co\n"] {
            #expect(throws: RuleViolation("email \"\(bad)\" is not a valid email address")) {
                try AccountRules.checkEmail(bad)
            }
        }
    }

    @Test("roles: root manages everyone, others only lower roles, the CLI everyone")
    func roles() {
        #expect(Role.canManage(actor: .root, target: .root))
        #expect(Role.canManage(actor: .admin, target: .user))
        #expect(!Role.canManage(actor: .admin, target: .admin))
        #expect(!Role.canManage(actor: .user, target: .user))
        #expect(Role.canManage(actor: nil, target: .root))
    }

    @Test("keys: name bytes, expiry, quota, model limits, allow-lists and group")
    func keys() throws {
        try TokenRules.checkName(String(repeating: "a", count: 50))
        #expect(throws: RuleViolation("name is too long: at most 50 bytes, got 51")) {
            try TokenRules.checkName(String(repeating: "a", count: 51))
        }
        #expect(throws: RuleViolation("name is too long: at most 50 bytes, got 52")) {
            try TokenRules.checkName(String(repeating: "é", count: 26))
        }
        try TokenRules.checkExpiry(-1, now: 100)
        try TokenRules.checkExpiry(101, now: 100)
        // Usable through the second its expiry names (new-api: `ExpiredTime < now` in whole seconds).
        let expiry = Date(timeIntervalSince1970: 100)
        #expect(!TokenRules.hasExpired(expiry, now: Date(timeIntervalSince1970: 100.999)))
        #expect(TokenRules.hasExpired(expiry, now: Date(timeIntervalSince1970: 101)))
        #expect(
            throws: RuleViolation("expired_time 100 is in the past; use a future unix time in seconds, or -1 for never")
        ) {
            try TokenRules.checkExpiry(100, now: 100)
        }
        for bad: Int64 in [0, -2, TokenRules.latestExpiry + 1] {
            #expect(
                throws: RuleViolation("expired_time must be -1 (never expires) or a unix time in seconds, got \(bad)")
            ) {
                try TokenRules.checkExpiry(bad, now: 100)
            }
        }
        try TokenRules.checkQuota(0)
        try TokenRules.checkQuota(QuotaLimits.maximum)
        #expect(throws: RuleViolation("remain_quota cannot be negative, got -1")) { try TokenRules.checkQuota(-1) }
        // An unlimited key's remain_quota only counts down (new-api's often hold a negative one).
        try TokenRules.checkQuota(-123_456, unlimited: true)
        #expect(throws: RuleViolation.self) { try TokenRules.checkQuota(-QuotaLimits.maximum - 1, unlimited: true) }
        #expect(
            throws: RuleViolation(
                "quota exceeds the maximum of \(QuotaLimits.maximum) units, got \(QuotaLimits.maximum + 1)")
        ) {
            try TokenRules.checkQuota(QuotaLimits.maximum + 1, field: "quota")
        }
        #expect(try TokenRules.normalizedModelLimits(" gpt-4o, claude-sonnet-4 ,gpt-4o") == "gpt-4o,claude-sonnet-4")
        #expect(try TokenRules.normalizedAllowIPs("10.0.0.0/8, ::1") == "10.0.0.0/8\n::1")
        #expect(throws: RuleViolation.self) { try TokenRules.normalizedAllowIPs("10.0.0.1/8") }
        try TokenRules.checkGroupName("")
        try TokenRules.checkGroupName("vip")
        #expect(throws: RuleViolation("group \"v i p\" is not a valid group name")) {
            try TokenRules.checkGroupName("v i p")
        }
    }

    @Test("groups: names of [A-Za-z0-9_.-], 1–64 bytes; descriptions; rpm limits")
    func groups() throws {
        for good in ["default", "VIP.tier-2_b", String(repeating: "g", count: 64)] {
            #expect(GroupRules.isValidName(good))
            try GroupRules.checkName(good)
        }
        for bad in ["", "vip!", "vïp", "a b", String(repeating: "g", count: 65)] {
            #expect(!GroupRules.isValidName(bad))
            #expect(throws: RuleViolation.self) { try GroupRules.checkName(bad) }
        }
        try GroupRules.checkDescription("line one\nline two")
        #expect(throws: RuleViolation("description is longer than 500 characters")) {
            try GroupRules.checkDescription(String(repeating: "d", count: 501))
        }
        try GroupRules.checkRPM(nil)
        try GroupRules.checkRPM(60)
        for bad in [0, -1, 1_000_000_001] {
            #expect(
                throws: RuleViolation("rpm_limit must be a positive whole number (or null for no limit), got \(bad)")
            ) {
                try GroupRules.checkRPM(bad)
            }
        }
    }

    @Test("channels: a name, groups trimmed without repeats, valid models")
    func channels() throws {
        try ChannelRules.checkName("upstream-1")
        #expect(throws: RuleViolation("name is required")) { try ChannelRules.checkName("  ") }
        #expect(throws: RuleViolation("name is longer than 200 characters")) {
            try ChannelRules.checkName(String(repeating: "c", count: 201))
        }
        #expect(try ChannelRules.normalizedGroups([" default", "vip ", "", "default"]) == ["default", "vip"])
        #expect(throws: RuleViolation("group must name at least one group")) {
            try ChannelRules.normalizedGroups([" "])
        }
        #expect(throws: RuleViolation("group \"v!p\" is not a valid group name")) {
            try ChannelRules.normalizedGroups(["v!p"])
        }
        #expect(try ChannelRules.normalizedModels(["gpt-4o"]) == ["gpt-4o"])
    }

    @Test("webhooks: http(s) URLs with a host; event names, without repeats")
    func webhooks() throws {
        try WebhookRules.checkURL("https://hooks.example.com/tally")
        try WebhookRules.checkURL("http://127.0.0.1:9000/x")
        for bad in [
            "ftp://x/y", "http:///nohost", "https//x", "https://exa mple.com", "mailto:a@b.co",
            "https://" + String(repeating: "a", count: 2048), "HTTPS://hooks.example.com/t",
        ] {
            #expect(
                throws: RuleViolation(
                    "a webhook URL must be an http:// or https:// URL with a host, at most 2048 characters")
            ) {
                try WebhookRules.checkURL(bad)
            }
        }
        #expect(try WebhookRules.parseEvents("") == [])
        #expect(try WebhookRules.parseEvents(" balance.low , export.ready,balance.low") == [.balanceLow, .exportReady])
        #expect(
            throws: RuleViolation(
                "unknown event type \"balance.lo\"; known: balance.low, balance.exhausted, user.suspended, export.ready"
            )
        ) {
            try WebhookRules.parseEvents("balance.low,balance.lo")
        }
    }

    @Test("statuses: new-api's numbers; callers set keys only enabled or disabled")
    func statuses() throws {
        #expect(UserStatus.enabled.rawValue == 1 && UserStatus.disabled.rawValue == 2)
        #expect([TokenStatus.enabled, .disabled, .expired, .exhausted].map(\.rawValue) == [1, 2, 3, 4])
        #expect([ChannelStatus.enabled, .disabled, .autoDisabled].map(\.rawValue) == [1, 2, 3])
        #expect([RedemptionStatus.enabled, .disabled, .used].map(\.rawValue) == [1, 2, 3])
        #expect(try TokenStatus.parse(4) == .exhausted)
        #expect(TokenStatus.enabled.isSettable && TokenStatus.disabled.isSettable)
        #expect(!TokenStatus.expired.isSettable && !TokenStatus.exhausted.isSettable)
        #expect(throws: RuleViolation("status must be 1 (enabled) or 2 (disabled), got 5")) { try TokenStatus.parse(5) }
        #expect(try ChannelStatus.parse(3) == .autoDisabled)
        #expect(throws: RuleViolation("status must be 1 (enabled), 2 (disabled) or 3 (auto-disabled), got 0")) {
            try ChannelStatus.parse(0)
        }
    }
}
