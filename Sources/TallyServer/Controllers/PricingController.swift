import Foundation
import Hummingbird
import TallyCore
import TallyPostgres
import TallyStore

/// `GET /api/pricing` (public): the effective prices per group of the version in force, and the
/// group table.
struct PricingController {
    let prices: PriceCatalog

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("pricing", use: pricing)
        return routes
    }

    struct PricingJSON: Encodable {
        let price_version_id: Int64?
        let effective_from: String?
        let groups: [PricingTable.Group]
        let models: [PricingTable.Model]
    }

    @Sendable func pricing(_ request: Request, context: TallyRequestContext) throws -> Response {
        guard let version = prices.book.version(at: Date()) else {
            return try SystemJSON.success(
                PricingJSON(price_version_id: nil, effective_from: nil, groups: [], models: []))
        }
        let table = PricingTable(sheet: version.sheet)
        return try SystemJSON.success(
            PricingJSON(
                price_version_id: version.id, effective_from: PostgresTimestamp.format(version.effectiveFrom),
                groups: table.groups, models: table.models))
    }
}
