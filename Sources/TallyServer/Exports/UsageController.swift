import Hummingbird
import TallyCore
import TallyStore

/// `GET /api/usage/self`: the signed-in user's own usage of the month, by model, day or key.
struct UsageController {
    let streamer: ExportStreamer

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("usage/self", use: ownUsage)
        return routes
    }

    @Sendable func ownUsage(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let export = try ExportStreamer.parse(
            request, allowed: [.model, .day, .token], defaultBy: "model",
            userID: try context.requireUser().id, rawAllowed: false)
        return try await streamer.stream(export, context)
    }
}
