import Hummingbird
import TallyCore
import TallyStore

/// `GET /api/admin/exports/usage` (admins): usage of the month by user, token, model, group or
/// day, or every request row (`raw`), as CSV or NDJSON (docs/exports.md).
struct ExportController {
    let streamer: ExportStreamer

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("admin/exports/usage", use: usage)
        return routes
    }

    /// `?user_id=` narrows the export to one user.
    @Sendable func usage(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let export = try ExportStreamer.parse(
            request, allowed: Set(ExportDimension.allCases), defaultBy: "user",
            userID: try Self.userFilter(request))
        return try await streamer.stream(export, context)
    }

    static func userFilter(_ request: Request) throws -> Int64? {
        guard let id = try SystemInput.integer(request, "user_id") else { return nil }
        guard id > 0 else { throw APIError.invalidRequest("user_id must be a positive integer") }
        return id
    }
}
