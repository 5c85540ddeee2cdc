import Hummingbird
import TallyCore
import TallyStore

/// new-api's admin log views: `GET /api/log/` (a user's rows, channel names shown) and
/// `GET /api/log/stat` (their `{quota, rpm, tpm}`), with the filters of `GET /api/log/self` and
/// new-api's two admin ones, `username` (exact) and `channel` (an id; `0` or empty: any).
/// `username` is required: a user's rows are read by its key (request rows are kept by user and
/// time), while every user's would be read and sorted whole, on the pool authorize and ingest
/// share. Every user's figures come from the exports.
struct AdminLogController {
    let logs: LogRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("log", use: list)
        routes.get("log/stat", use: stat)
        return routes
    }

    @Sendable func list(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let page = SystemInput.page(request)
        let (filter, user) = try await Self.filter(request, logs: logs)
        var found = Page<LogEntry>(items: [], total: 0, request: page)
        if let user { found = try await logs.entries(userID: user, filter: filter, page: page, channelNames: true) }
        return try SystemJSON.success(SystemJSON.PageInfo(found) { LogJSON($0) })
    }

    @Sendable func stat(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let (filter, user) = try await Self.filter(request, logs: logs)
        var stat = LogStat.none
        if let user { stat = try await logs.stat(userID: user, filter: filter) }
        return try SystemJSON.success(LogController.StatJSON(stat))
    }

    static let usernameRequired =
        "username is required: give the user whose logs to read (every user's usage: GET /api/admin/exports/usage)"

    /// `GET /api/log/self`'s filters, `channel`, and the id of the user `username` names (nil
    /// when it names none).
    static func filter(_ request: Request, logs: LogRepository) async throws -> (LogFilter, Int64?) {
        var filter = try LogController.logFilter(request)
        if let channel = try SystemInput.integer(request, "channel"), channel != 0 {
            guard channel > 0 else { throw APIError.invalidRequest("channel must be a channel id, got \(channel)") }
            filter.channel = channel
        }
        guard let username = try SystemInput.string(request, "username"), !username.isEmpty else {
            throw APIError.invalidRequest(usernameRequired)
        }
        guard username.count <= 64 else { throw APIError.invalidRequest("username is longer than 64 characters") }
        return (filter, try await logs.userID(named: username))
    }
}
