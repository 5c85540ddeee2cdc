import Foundation
import Hummingbird
import TallyCore
import TallyStore

/// The client-facing routes authenticated with an API key: `GET /v1/models`, the OpenAI-style
/// quota queries `/v1/dashboard/billing/{subscription,usage}` (and their aliases without
/// `/v1`), and new-api's own key query `GET /api/usage/token/`.
struct KeyController {
    let authenticator: APIKeyAuthenticator
    let models: ModelAvailability
    let groups: GroupRepository

    /// Every route of API-key clients; each handler authenticates the key itself.
    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("v1/models", use: listModels)
        for prefix in ["v1/dashboard/billing", "dashboard/billing"] {
            routes.get("\(prefix)/subscription", use: subscription)
            routes.get("\(prefix)/usage", use: usage)
        }
        routes.get("api/usage/token", use: tokenUsage)
        return routes
    }

    /// The models this key may use: its group's (the owner's group when the key has none),
    /// narrowed to the key's model limits when they are on. A key of a group its owner may no
    /// longer use (not the owner's, not selectable) is refused, as authorize refuses it.
    func keyModels(_ token: APIToken, owner: User) async throws -> [AvailableModel] {
        if !token.group.isEmpty, token.group != owner.group,
            try await !groups.usable(by: owner).contains(where: { $0.name == token.group })
        {
            throw APIError(.insufficientPermissions)
        }
        var list = try await models.models(group: token.group.isEmpty ? owner.group : token.group)
        if token.modelLimitsEnabled {
            let allowed = Set(token.modelLimitList)
            list = list.filter { ModelNames.limitsAllow(allowed, $0.id) }
        }
        return list
    }

    struct OpenAIModel: Encodable {
        var id: String
        var object = "model"
        var created: Int64
        var owned_by: String
        var supported_endpoint_types: [String]
    }

    struct OpenAIList: Encodable {
        var success = true
        var data: [OpenAIModel]
        var object = "list"
    }

    struct AnthropicModel: Encodable {
        var id: String
        var created_at: String
        var display_name: String
        var type = "model"
    }

    struct AnthropicList: Encodable {
        var data: [AnthropicModel]
        var first_id: String?
        var has_more = false
        var last_id: String?

        enum CodingKeys: String, CodingKey { case data, first_id, has_more, last_id }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(data, forKey: .data)
            try container.encode(first_id, forKey: .first_id)
            try container.encode(has_more, forKey: .has_more)
            try container.encode(last_id, forKey: .last_id)
        }
    }

    /// new-api's `ListModels`: the OpenAI list (plus `"success":true`); with `x-api-key` and
    /// `anthropic-version`, the Anthropic list.
    @Sendable func listModels(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let (token, owner) = try await authenticator.authenticate(request, context: context)
        let list = try await keyModels(token, owner: owner)
        if request.headers[.xAPIKey] != nil, request.headers[.anthropicVersion] != nil {
            let created = "2021-07-20T10:40:00Z"  // new-api's `created` (1626777600) in RFC 3339
            let data = list.map { AnthropicModel(id: $0.id, created_at: created, display_name: $0.id) }
            return try SystemJSON.json(AnthropicList(data: data, first_id: data.first?.id, last_id: data.last?.id))
        }
        return try SystemJSON.json(
            OpenAIList(
                data: list.map {
                    OpenAIModel(
                        id: $0.id, created: ModelNames.listCreated, owned_by: $0.ownedBy,
                        supported_endpoint_types: $0.endpointTypes)
                }))
    }

    struct Subscription: Encodable {
        var object = "billing_subscription"
        var has_payment_method = true
        var soft_limit_usd: Double
        var hard_limit_usd: Double
        var system_hard_limit_usd: Double
        var access_until: Int64
    }

    struct Usage: Encodable {
        var object = "list"
        var total_usage: Double
    }

    /// What an unlimited key reports as its limit (new-api's figure).
    static let unlimitedUSD: Double = 100_000_000

    /// new-api's `GetSubscription` with token stats on: a limited key reports its own quota
    /// (remaining + used), an unlimited one 100000000; `access_until` is the key's expiry or 0.
    @Sendable func subscription(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let (token, _) = try await authenticator.authenticate(request, context: context)
        let amount =
            token.unlimitedQuota
            ? Self.unlimitedUSD
            : Double(token.remainQuota + token.usedQuota) / Double(Money.unitsPerUSD)
        return try SystemJSON.json(
            Subscription(
                soft_limit_usd: amount, hard_limit_usd: amount, system_hard_limit_usd: amount,
                access_until: token.expiredTime > 0 ? token.expiredTime : 0))
    }

    /// `total_usage` in cents: the key's used quota when it is limited, the account's when the
    /// key is unlimited (issue 6: "token quota when limited, else the account's").
    @Sendable func usage(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let (token, owner) = try await authenticator.authenticate(request, context: context)
        let used = token.unlimitedQuota ? owner.usedQuota : token.usedQuota
        return try SystemJSON.json(Usage(total_usage: Double(used) * 100 / Double(Money.unitsPerUSD)))
    }

    struct TokenUsage: Encodable {
        var code = true
        var message = "ok"
        var data: Figures

        struct Figures: Encodable {
            var object = "token_usage"
            var name: String
            var total_granted: Int64
            var total_used: Int64
            var total_available: Int64
            var unlimited_quota: Bool
            var model_limits: [String: Bool]
            var model_limits_enabled: Bool
            var expires_at: Int64
        }
    }

    /// new-api's `GetTokenUsage`: the key's own figures in quota units (granted = remaining +
    /// used, whatever `unlimited_quota` says), its model limits as a set, and its expiry (0 = never).
    /// Read-only authentication, as new-api's: an expired or spent key may read its figures.
    @Sendable func tokenUsage(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let (token, _) = try await authenticator.authenticateReadOnly(request)
        return try SystemJSON.json(
            TokenUsage(
                data: TokenUsage.Figures(
                    name: token.name, total_granted: token.remainQuota + token.usedQuota, total_used: token.usedQuota,
                    total_available: token.remainQuota, unlimited_quota: token.unlimitedQuota,
                    model_limits: Dictionary(token.modelLimitList.map { ($0, true) }, uniquingKeysWith: { a, _ in a }),
                    model_limits_enabled: token.modelLimitsEnabled,
                    expires_at: token.expiredTime > 0 ? token.expiredTime : 0)))
    }
}
