import Foundation
import Hummingbird
import TallyCore
import TallyStore

/// `GET /api/admin/prices` and `PUT /api/admin/prices` (admins): list and load price versions.
struct PriceVersionController {
    let prices: PriceCatalog
    let repository: any PriceRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("admin/prices", use: list)
        routes.put("admin/prices", use: load)
        return routes
    }

    @Sendable func list(_ request: Request, context: TallyRequestContext) async throws -> Response {
        try SystemJSON.success(try await repository.all().map(\.info))
    }

    /// The body is the sheet itself (YAML or JSON), at most 4 MiB; `?effective_from=` overrides
    /// the sheet's.
    @Sendable func load(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let body = try await request.body.collect(upTo: 4 * 1024 * 1024)
        let sheet: PriceSheet
        do { sheet = try PriceSheet.parse(String(buffer: body)) } catch {
            throw APIError.invalidRequest(
                "invalid price sheet: " + error.problems.map(\.description).joined(separator: "; ")
                    + (error.unlisted == 0 ? "" : "; and \(error.unlisted) more"))
        }
        var effectiveFrom: Date?
        if let text = request.uri.queryParameters.get("effective_from") {
            guard let parsed = OperatorTime.parse(text) else {
                throw APIError.invalidRequest("effective_from must be an RFC 3339 time, e.g. 2026-11-01T00:00:00Z")
            }
            effectiveFrom = parsed
        }
        let actor = Actor(userID: user.id, name: user.username, tid: context.tid)
        let stored = try await prices.load(sheet, effectiveFrom: effectiveFrom, source: "api", by: actor)
        return try SystemJSON.success(stored.info)
    }
}
