import Hummingbird
import TallyCore
import TallyStore

/// `GET /api/admin/logs?tid=…|request_id=…` (admins): request rows (any user), ingest rejects
/// and audit entries recorded under that tid or request id.
struct LogLookupController {
    let logs: LogRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("admin/logs", use: lookup)
        return routes
    }

    struct RejectJSON: Encodable {
        var id: Int64
        var received_at: Int64
        var batch_tid: String
        var line: Int
        var request_id: String?
        var code: String
        var message: String
        var raw: String
    }

    struct AuditJSON: Encodable {
        var id: Int64
        var at: Int64
        var actor_id: Int64?
        var actor: String
        var action: String
        var target: String
        var before: String?
        var after: String?
        var tid: String?
    }

    struct LookupJSON: Encodable {
        var logs: [LogJSON]
        var rejects: [RejectJSON]
        var audit: [AuditJSON]
    }

    @Sendable func lookup(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let tid = try SystemInput.tid(request)
        let requestID = try SystemInput.string(request, "request_id")
        guard tid != nil || requestID != nil else {
            throw APIError.invalidRequest("give tid (32 hex characters) or request_id")
        }
        if let requestID, requestID.count > 200 {
            throw APIError.invalidRequest("request_id is longer than 200 characters")
        }
        let found = try await logs.lookup(tid: tid, requestID: requestID)
        return try SystemJSON.success(
            LookupJSON(
                logs: found.logs.map(LogJSON.init),
                rejects: found.rejects.map {
                    RejectJSON(
                        id: $0.id, received_at: $0.receivedTime, batch_tid: $0.batchTid, line: $0.line,
                        request_id: $0.requestID, code: $0.code, message: $0.message, raw: $0.raw)
                },
                audit: found.audit.map {
                    AuditJSON(
                        id: $0.id, at: $0.time, actor_id: $0.actorID, actor: $0.actor, action: $0.action,
                        target: $0.target, before: $0.before, after: $0.after, tid: $0.tid)
                }))
    }
}
