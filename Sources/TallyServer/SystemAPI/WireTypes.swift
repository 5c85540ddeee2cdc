import Foundation
import TallyCore
import TallyStore

// The System API's JSON, field for field as new-api writes it (reference/new-api-wire.md).
// `SystemJSON.encoder` sorts keys, as Go does for new-api's `gin.H` maps.

/// new-api's `model.Token`, every field with its JSON type. `key` is masked (`sk-…` + last 6) everywhere
/// except in the answer that creates the key.
struct TokenJSON: Encodable {
    var token: APIToken
    var key: String

    init(_ token: APIToken, fullKey: String? = nil) {
        self.token = token
        key = fullKey ?? Secrets.maskedKey(last6: token.keyLast6)
    }

    enum Keys: String, CodingKey {
        case id, user_id, key, status, name, created_time, accessed_time, expired_time, remain_quota, unlimited_quota
        case model_limits_enabled, model_limits, allow_ips, used_quota, group, cross_group_retry, DeletedAt, auto_groups
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(token.id, forKey: .id)
        try container.encode(token.userID, forKey: .user_id)
        try container.encode(key, forKey: .key)
        try container.encode(token.status.rawValue, forKey: .status)
        try container.encode(token.name, forKey: .name)
        try container.encode(token.createdTime, forKey: .created_time)
        try container.encode(token.accessedTime, forKey: .accessed_time)
        try container.encode(token.expiredTime, forKey: .expired_time)
        try container.encode(token.remainQuota, forKey: .remain_quota)
        try container.encode(token.unlimitedQuota, forKey: .unlimited_quota)
        try container.encode(token.modelLimitsEnabled, forKey: .model_limits_enabled)
        try container.encode(token.modelLimits, forKey: .model_limits)
        try container.encode(token.allowIPs, forKey: .allow_ips)
        try container.encode(token.usedQuota, forKey: .used_quota)
        try container.encode(token.group, forKey: .group)
        try container.encode(false, forKey: .cross_group_retry)
        try container.encodeNil(forKey: .DeletedAt)
        try container.encodeNil(forKey: .auto_groups)
    }
}

/// `GET /api/user/self`: new-api's `buildSelfUserData` map. Fields Tally has no use for (OAuth
/// ids, affiliate figures) keep their zero values so clients that read them still work.
struct SelfJSON: Encodable {
    var aff_code = ""
    var aff_count = 0
    var aff_history_quota = 0
    var aff_quota = 0
    var discord_id = ""
    var display_name: String
    var email: String
    var github_id = ""
    var group: String
    var id: Int64
    var inviter_id = 0
    var linux_do_id = ""
    var oidc_id = ""
    var permissions: Permissions
    var quota: Int64
    var request_count: Int64
    var role: Int
    var setting = ""
    var sidebar_modules = ""
    var status: Int
    var stripe_customer = ""
    var telegram_id = ""
    var used_quota: Int64
    var username: String
    var wechat_id = ""

    init(_ user: User) {
        display_name = user.displayName
        email = user.email
        group = user.group
        id = user.id
        permissions = Permissions(role: user.role)
        quota = user.quota
        request_count = user.requestCount
        role = user.role.rawValue
        status = user.status.rawValue
        used_quota = user.usedQuota
        username = user.username
    }

    /// new-api's `calculateUserPermissions` (+ an empty `admin_permissions`).
    struct Permissions: Encodable {
        var role: Role

        enum Keys: String, CodingKey { case admin_permissions, sidebar_modules, sidebar_settings }
        enum AdminKeys: String, CodingKey { case admin, setting }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Keys.self)
            _ = container.nestedContainer(keyedBy: AdminKeys.self, forKey: .admin_permissions)
            var modules = container.nestedContainer(keyedBy: AdminKeys.self, forKey: .sidebar_modules)
            switch role {
            case .root: break
            case .admin:
                var admin = modules.nestedContainer(keyedBy: AdminKeys.self, forKey: .admin)
                try admin.encode(false, forKey: .setting)
            case .user:
                try modules.encode(false, forKey: .admin)
            }
            try container.encode(role != .root, forKey: .sidebar_settings)
        }
    }
}

/// A user as admins list them (new-api's `model.User`, the fields Tally keeps).
struct UserJSON: Encodable {
    var id: Int64
    var username: String
    var display_name: String
    var role: Int
    var status: Int
    var email: String
    var group: String
    var quota: Int64
    var used_quota: Int64
    var request_count: Int64

    init(_ user: User) {
        id = user.id
        username = user.username
        display_name = user.displayName
        role = user.role.rawValue
        status = user.status.rawValue
        email = user.email
        group = user.group
        quota = user.quota
        used_quota = user.usedQuota
        request_count = user.requestCount
    }
}

/// A created user: the account and its access token, shown only in this answer.
struct CreatedUserJSON: Encodable {
    var id: Int64
    var username: String
    var display_name: String
    var role: Int
    var status: Int
    var email: String
    var group: String
    var quota: Int64
    var used_quota: Int64
    var request_count: Int64
    var access_token: String

    init(_ user: User, accessToken: String) {
        let base = UserJSON(user)
        id = base.id
        username = base.username
        display_name = base.display_name
        role = base.role
        status = base.status
        email = base.email
        group = base.group
        quota = base.quota
        used_quota = base.used_quota
        request_count = base.request_count
        access_token = accessToken
    }
}

/// new-api's `model.Log`.
struct LogJSON: Encodable {
    var id: Int
    var user_id: Int64
    var created_at: Int64
    var type: Int
    var content: String
    var username: String
    var token_name: String
    var model_name: String
    var quota: Int64
    var prompt_tokens: Int64
    var completion_tokens: Int64
    var use_time: Int64
    var is_stream: Bool
    var channel: Int64
    var channel_name: String
    var token_id: Int64
    var group: String
    var ip: String
    var request_id: String?
    var other: String

    init(_ entry: LogEntry) {
        id = entry.id
        user_id = entry.userID
        created_at = entry.createdAt
        type = entry.type
        content = entry.content
        username = entry.username
        token_name = entry.tokenName
        model_name = entry.modelName
        quota = entry.quota
        prompt_tokens = entry.promptTokens
        completion_tokens = entry.completionTokens
        use_time = entry.useTime
        is_stream = entry.isStream
        channel = entry.channel
        channel_name = entry.channelName
        token_id = entry.tokenID
        group = entry.group
        ip = entry.ip
        request_id = entry.requestID
        other = entry.other
    }
}

/// A channel: new-api's names, `group` and `models` as comma-separated text.
struct ChannelJSON: Encodable {
    var id: Int64
    var name: String
    var status: Int
    var group: String
    var models: String
    var used_quota: Int64
    var created_time: Int64
    var updated_time: Int64

    init(_ channel: Channel) {
        id = channel.id
        name = channel.name
        status = channel.status.rawValue
        group = channel.groups.joined(separator: ",")
        models = channel.models.joined(separator: ",")
        used_quota = channel.usedQuota
        created_time = channel.createdTime
        updated_time = channel.updatedTime
    }
}

/// new-api's `model.Redemption`; the code is masked (stored hashed). `count` (a field of
/// new-api's create request) is 0 and `DeletedAt` null in every answer, as new-api sends them.
struct RedemptionJSON: Encodable {
    var id: Int64
    var user_id: Int64
    var key: String
    var status: Int
    var name: String
    var quota: Int64
    var created_time: Int64
    var redeemed_time: Int64
    var used_user_id: Int64
    var expired_time: Int64

    enum CodingKeys: String, CodingKey {
        case id, user_id, key, status, name, quota, created_time, redeemed_time, count, used_user_id, DeletedAt
        case expired_time
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(user_id, forKey: .user_id)
        try container.encode(key, forKey: .key)
        try container.encode(status, forKey: .status)
        try container.encode(name, forKey: .name)
        try container.encode(quota, forKey: .quota)
        try container.encode(created_time, forKey: .created_time)
        try container.encode(redeemed_time, forKey: .redeemed_time)
        try container.encode(0, forKey: .count)
        try container.encode(used_user_id, forKey: .used_user_id)
        try container.encodeNil(forKey: .DeletedAt)
        try container.encode(expired_time, forKey: .expired_time)
    }

    init(_ redemption: Redemption) {
        id = redemption.id
        user_id = redemption.createdBy ?? 0
        key = "\u{2026}" + redemption.codeLast6
        status = redemption.status.rawValue
        name = redemption.name
        quota = redemption.quota
        created_time = redemption.createdTime
        redeemed_time = redemption.redeemedTime
        used_user_id = redemption.usedUserID
        expired_time = redemption.expiredTime
    }
}

/// A row of the group table.
struct GroupJSON: Encodable {
    var name: String
    var description: String
    var selectable: Bool
    var rpm_limit: Int?
    var model_rpm_limit: Int?
    var created_time: Int64
    var updated_time: Int64

    init(_ group: AccountGroup) {
        name = group.name
        description = group.description
        selectable = group.selectable
        rpm_limit = group.rpmLimit
        model_rpm_limit = group.modelRPMLimit
        created_time = group.createdTime
        updated_time = group.updatedTime
    }

    enum CodingKeys: String, CodingKey {
        case name, description, selectable, rpm_limit, model_rpm_limit, created_time, updated_time
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(description, forKey: .description)
        try container.encode(selectable, forKey: .selectable)
        try container.encode(rpm_limit, forKey: .rpm_limit)  // null when unlimited
        try container.encode(model_rpm_limit, forKey: .model_rpm_limit)
        try container.encode(created_time, forKey: .created_time)
        try container.encode(updated_time, forKey: .updated_time)
    }
}

struct TopUpJSON: Encodable {
    var id: Int64
    var user_id: Int64
    var amount: Int64
    var reason: String
    var idempotency_key: String?
    var quota: Int64
    var created_time: Int64

    init(_ result: TopUpResult) {
        id = result.id
        user_id = result.userID
        amount = result.amount
        reason = result.reason
        idempotency_key = result.idempotencyKey
        quota = result.quota
        created_time = result.createdTime
    }

    enum CodingKeys: String, CodingKey { case id, user_id, amount, reason, idempotency_key, quota, created_time }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(user_id, forKey: .user_id)
        try container.encode(amount, forKey: .amount)
        try container.encode(reason, forKey: .reason)
        try container.encode(idempotency_key, forKey: .idempotency_key)
        try container.encode(quota, forKey: .quota)
        try container.encode(created_time, forKey: .created_time)
    }
}

/// A list field that clients send either as comma-separated text (new-api) or as a JSON array.
struct CommaList: Decodable, Equatable {
    var items: [String]
    var text: String { items.joined(separator: ",") }

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            items = text.split(whereSeparator: { $0 == "," || $0 == "\n" || $0 == "\r" }).map(String.init)
        } else if let array = try? container.decode([String].self) {
            items = array
        } else {
            throw DecodingError.typeMismatch(
                String.self,
                .init(
                    codingPath: decoder.codingPath,
                    debugDescription: "expected comma-separated text or an array of strings"))
        }
    }
}
