import Foundation
import Hummingbird
import TallyCore
import TallyPostgres
import TallyStore

/// `GET /api/pricing` (public: effective prices per group and the group table),
/// `GET /api/admin/prices` and `PUT /api/admin/prices` (admins: list and load versions).
struct PricingController {
    let prices: PriceCatalog
    let repository: any PriceRepository

    func addPublicRoutes(to router: Router<TallyRequestContext>) {
        router.get("/api/pricing", use: pricing)
    }

    func addAdminRoutes(to group: RouterGroup<TallyRequestContext>) {
        group.get("/prices", use: list)
        group.put("/prices", use: load)
    }

    struct PricingData: Encodable, Sendable {
        let priceVersionId: Int64?
        let effectiveFrom: String?
        let groups: [PricingTable.Group]
        let models: [PricingTable.Model]
    }

    @Sendable func pricing(_ request: Request, context: TallyRequestContext) async throws -> Envelope<PricingData> {
        guard let version = prices.book.version(at: Date()) else {
            return Envelope(PricingData(priceVersionId: nil, effectiveFrom: nil, groups: [], models: []))
        }
        let table = PricingTable(sheet: version.sheet)
        return Envelope(PricingData(priceVersionId: version.id, effectiveFrom: PostgresTimestamp.format(version.effectiveFrom),
                                    groups: table.groups, models: table.models))
    }

    @Sendable func list(_ request: Request, context: TallyRequestContext) async throws -> Envelope<[PriceVersionInfo]> {
        Envelope(try await repository.all().map(\.info))
    }

    /// The body is the sheet itself (YAML or JSON); `?effective_from=` overrides the sheet's.
    @Sendable func load(_ request: Request, context: TallyRequestContext) async throws -> Envelope<PriceVersionInfo> {
        let user = try context.requireUser()
        let body = try await request.body.collect(upTo: 4 * 1024 * 1024)
        let sheet: PriceSheet
        do { sheet = try PriceSheet.parse(String(buffer: body)) } catch {
            throw APIError.invalidRequest("invalid price sheet: " + error.problems.map(\.description).joined(separator: "; "))
        }
        var effectiveFrom: Date?
        if let text = request.uri.queryParameters.get("effective_from") {
            guard let parsed = PostgresTimestamp.parse(text) else {
                throw APIError.invalidRequest("effective_from must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z")
            }
            effectiveFrom = parsed
        }
        let actor = Actor(userID: user.id, name: user.username, tid: context.tid)
        let stored = try await prices.load(sheet, effectiveFrom: effectiveFrom, source: "api", by: actor)
        return Envelope(stored.info)
    }
}
