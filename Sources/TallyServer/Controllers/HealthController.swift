import Hummingbird
import TallyPostgres

/// `GET /healthz` (the process is up), `GET /readyz` (PostgreSQL answers) and `GET /metrics`.
struct HealthController {
    let pool: PostgresPool

    func addRoutes(to router: Router<TallyRequestContext>) {
        router.get("/healthz") { _, _ in Status(status: "ok") }
        router.get("/readyz") { _, _ in
            try await pool.withConnection { connection in _ = try connection.query("SELECT 1") }
            return Status(status: "ready")
        }
        router.get("/metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: TallyMetrics.registry.emitToBuffer())))
        }
    }

    struct Status: ResponseEncodable { let status: String }
}
