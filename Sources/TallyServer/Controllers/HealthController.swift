import Hummingbird
import TallyPostgres

/// `GET /healthz` (the process is up), `GET /readyz` (PostgreSQL answers) and `GET /metrics`.
struct HealthController {
    let pool: PostgresPool

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("healthz", use: health)
        routes.get("readyz", use: readiness)
        routes.get("metrics", use: metrics)
        return routes
    }

    struct Status: ResponseEncodable { let status: String }

    @Sendable func health(_ request: Request, context: TallyRequestContext) -> Status {
        Status(status: "ok")
    }

    @Sendable func readiness(_ request: Request, context: TallyRequestContext) async throws -> Status {
        try await pool.withConnection { connection in _ = try connection.query("SELECT 1") }
        return Status(status: "ready")
    }

    @Sendable func metrics(_ request: Request, context: TallyRequestContext) -> Response {
        Response(
            status: .ok,
            headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: TallyMetrics.registry.emitToBuffer())))
    }
}
