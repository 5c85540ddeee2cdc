import Foundation
import Hummingbird
import TallyCore
import TallyStore

/// The signed-in user's logs: `GET /api/log/self` (new-api's log rows, credits included) and
/// `GET /api/log/self/stat` (quota, rpm, tpm), with new-api's filters and Tally's `tid`.
struct LogController {
    let logs: LogRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("log/self", use: list)
        routes.get("log/self/stat", use: stat)
        return routes
    }

    @Sendable func list(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let page = try await logs.entries(
            userID: user.id, filter: try Self.logFilter(request),
            page: SystemInput.page(request), channelNames: false)
        return try SystemJSON.success(SystemJSON.PageInfo(page) { LogJSON($0) })
    }

    struct StatJSON: Encodable {
        var quota: Int64
        var rpm: Int64
        var tpm: Int64

        init(_ stat: LogStat) {
            quota = stat.quota
            rpm = stat.rpm
            tpm = stat.tpm
        }
    }

    @Sendable func stat(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let stat = try await logs.stat(userID: user.id, filter: try Self.logFilter(request))
        return try SystemJSON.success(StatJSON(stat))
    }

    /// new-api's log query parameters; `0` or empty means "no filter" as in new-api. `tid` is
    /// Tally's own: the requests logged under that trace id (a tid an error answer showed).
    static func logFilter(_ request: Request) throws -> LogFilter {
        func timestamp(_ name: String) throws -> Int64? {
            guard let value = try SystemInput.integer(request, name), value != 0 else { return nil }
            guard value > 0, value <= TokenRules.latestExpiry else {
                throw APIError.invalidRequest("\(name) must be a unix time in seconds, got \(value)")
            }
            return value
        }
        // new-api filters by the upstream's request id, which no gateway line carries to Tally:
        // refused, where ignored it would answer every row as if they matched.
        guard try SystemInput.string(request, "upstream_request_id")?.isEmpty ?? true else {
            throw APIError.invalidRequest("upstream_request_id cannot be searched: Tally keeps no upstream request ids")
        }
        let type = try SystemInput.integer(request, "type") ?? 0
        let tid = try SystemInput.tid(request)
        guard (0...7).contains(type) else {
            throw APIError.invalidRequest("type must be a log type from 0 to 7, got \(type)")
        }
        return try LogFilter(
            type: Int(type), startTimestamp: try timestamp("start_timestamp"),
            endTimestamp: try timestamp("end_timestamp"), modelName: SystemInput.string(request, "model_name"),
            tokenName: SystemInput.string(request, "token_name"), group: SystemInput.string(request, "group"),
            requestID: SystemInput.string(request, "request_id"), tid: tid)
    }
}
