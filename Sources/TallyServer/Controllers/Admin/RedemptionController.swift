import Hummingbird
import TallyCore
import TallyStore

/// `/api/redemption/` (admins): list redemption codes (masked) and create them.
struct RedemptionController {
    let balances: BalanceRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("redemption", use: list)
        routes.post("redemption", use: create)
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

    /// new-api's `AddRedemption`: `data` is the list of new codes, shown only now.
    @Sendable func create(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let body = try await SystemInput.decode(RedemptionBody.self, from: request)
        let codes = try await balances.createRedemptions(
            name: body.name ?? "", count: body.count ?? 1, quota: body.quota ?? 100,
            expiredTime: body.expired_time ?? 0, by: context.requireActor())
        return try SystemJSON.success(codes)
    }
}
