import Foundation
import Hummingbird
import TallyCore
import TallyStore

/// `/api/token/…`: the caller's API keys (DESIGN §6, new-api's token controller).
struct TokenController {
    let tokens: TokenRepository

    /// The body of `POST` and `PUT /api/token/`: new-api's `model.Token` fields; others ignored.
    struct Body: Decodable {
        var id: Int64?
        var name: String?
        var expired_time: Int64?
        var remain_quota: Int64?
        var unlimited_quota: Bool?
        var model_limits_enabled: Bool?
        var model_limits: CommaList?
        var allow_ips: String?
        var group: String?
        var status: Int?
    }

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("token", use: list)
        routes.get("token/search", use: search)
        routes.post("token", use: create)
        routes.put("token", use: update)
        routes.get("token/:id", use: get)
        routes.delete("token/:id", use: delete)
        routes.post("token/batch", use: deleteMany)
        return routes
    }

    @Sendable func list(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let page = try await tokens.list(userID: user.id, page: SystemInput.page(request))
        return try SystemJSON.success(SystemJSON.PageInfo(page) { TokenJSON($0) })
    }

    /// `GET /api/token/search?keyword=&token=`: the caller's keys whose name contains `keyword`
    /// and whose key ends with `token` (its last 6 characters, or the whole key), paged as the list.
    @Sendable func search(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let page = try await tokens.list(
            userID: user.id, page: SystemInput.page(request), nameContains: try SystemInput.string(request, "keyword"),
            keyEnding: try SystemInput.string(request, "token"))
        return try SystemJSON.success(SystemJSON.PageInfo(page) { TokenJSON($0) })
    }

    @Sendable func create(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let body = try await SystemInput.decode(Body.self, from: request)
        let draft = TokenDraft(
            name: body.name ?? "", expiredTime: body.expired_time ?? -1, remainQuota: body.remain_quota ?? 0,
            unlimitedQuota: body.unlimited_quota ?? false, modelLimitsEnabled: body.model_limits_enabled ?? false,
            modelLimits: body.model_limits?.text ?? "", allowIPs: body.allow_ips ?? "", group: body.group ?? "")
        let (token, key) = try await tokens.create(userID: user.id, draft)
        return try SystemJSON.success(TokenJSON(token, fullKey: key))
    }

    @Sendable func get(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let id = try SystemInput.id(context, what: "API key")
        return try SystemJSON.success(TokenJSON(try await tokens.get(id: id, userID: user.id)))
    }

    @Sendable func update(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let body = try await SystemInput.decode(Body.self, from: request)
        guard let id = body.id else { throw APIError.invalidRequest("id is required: the id of the API key to update") }
        guard id > 0 else { throw APIError.notFound("API key \(id) not found") }
        let statusOnly = try SystemInput.statusOnly(request)
        let changes = TokenChanges(
            name: body.name, expiredTime: body.expired_time, remainQuota: body.remain_quota,
            unlimitedQuota: body.unlimited_quota, modelLimitsEnabled: body.model_limits_enabled,
            modelLimits: body.model_limits?.text, allowIPs: body.allow_ips, group: body.group,
            status: try body.status.map(TokenStatus.parse))
        let token = try await tokens.update(id: id, userID: user.id, changes, statusOnly: statusOnly)
        return try SystemJSON.success(TokenJSON(token))
    }

    @Sendable func delete(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let id = try SystemInput.id(context, what: "API key")
        try await tokens.delete(id: id, userID: user.id)
        return try SystemJSON.successWithoutData()
    }

    struct BatchBody: Decodable {
        var ids: [Int64]
    }

    /// The most keys one batch deletes, as new-api's other batch route allows.
    static let batchLimit = 100

    /// `POST /api/token/batch {"ids":[…]}`: deletes those of the caller's keys, answers how many
    /// (new-api's "delete selected"); another user's id or a deleted key counts for nothing.
    @Sendable func deleteMany(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let body = try await SystemInput.decode(BatchBody.self, from: request)
        guard !body.ids.isEmpty, body.ids.count <= Self.batchLimit else {
            throw APIError.invalidRequest("ids must list 1 to \(Self.batchLimit) API key ids")
        }
        return try SystemJSON.success(try await tokens.delete(ids: body.ids, userID: user.id))
    }
}
