import Hummingbird
import TallyCore
import TallyStore

/// `/api/redemption/` (admins): list redemption codes (masked), create them, and disable or
/// enable an unused one (new-api's `PUT ?status_only=true`).
struct RedemptionController {
    let balances: BalanceRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("redemption", use: list)
        routes.post("redemption", use: create)
        routes.put("redemption", use: update)
        return routes
    }

    @Sendable func list(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let page = try await balances.listRedemptions(page: SystemInput.page(request))
        return try SystemJSON.success(SystemJSON.PageInfo(page) { RedemptionJSON($0) })
    }

    struct RedemptionBody: Decodable {
        var name: String?
        var count: Int?
        var quota: Int64?
        var expired_time: Int64?
    }

    struct StatusBody: Decodable {
        var id: Int64?
        var status: Int?
    }

    /// new-api's `UpdateRedemption` with `status_only`: `{id, status}`, 1 enabled or 2 disabled.
    /// Its other form (a new name, quota or expiry of an unused code) is not served: changing
    /// what a code is worth after it was handed out is a credit no top-up rule checks.
    @Sendable func update(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let statusOnly = try SystemInput.statusOnly(request)
        guard statusOnly else {
            throw APIError.invalidRequest(
                "only status changes are served: PUT /api/redemption/?status_only=true with {\"id\",\"status\"}")
        }
        let body = try await SystemInput.decode(StatusBody.self, from: request)
        guard let id = body.id else { throw APIError.invalidRequest("id is required") }
        guard let status = body.status.flatMap(RedemptionStatus.init(rawValue:)), status != .used else {
            throw APIError.invalidRequest("status must be 1 (enabled) or 2 (disabled)")
        }
        let updated = try await balances.setRedemptionStatus(
            id: id, enabled: status == .enabled, by: context.requireActor())
        return try SystemJSON.success(RedemptionJSON(updated))
    }

    /// new-api's `AddRedemption`: `data` is the list of new codes, shown only now.
    @Sendable func create(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let body = try await SystemInput.decode(RedemptionBody.self, from: request)
        let codes = try await balances.createRedemptions(
            name: body.name ?? "", count: body.count ?? 1, quota: body.quota ?? 100,
            expiredTime: body.expired_time ?? 0, by: context.requireActor())
        return try SystemJSON.success(codes)
    }
}
