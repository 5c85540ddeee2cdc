import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import TallyCore
import TallyPostgres
import TallyStore

/// The parts of a running Tally: one pool and the repositories over it.
public struct TallyServices: Sendable {
    public let pool: PostgresPool
    public let users: any UserRepository
    // System API (issue 6).
    public let accounts: AccountRepository
    public let apiKeys: TokenRepository
    public let groups: GroupRepository
    public let channels: ChannelRepository
    public let balances: BalanceRepository
    public let logs: LogRepository

    public init(pool: PostgresPool) {
        self.pool = pool
        users = PostgresUserRepository(pool: pool)
        accounts = AccountRepository(pool: pool)
        apiKeys = TokenRepository(pool: pool)
        groups = GroupRepository(pool: pool)
        channels = ChannelRepository(pool: pool)
        balances = BalanceRepository(pool: pool)
        logs = LogRepository(pool: pool)
    }
}

/// Builds the HTTP application: migrates the database, wires controllers and middleware.
public func buildApplication(_ configuration: TallyConfiguration) async throws -> some ApplicationProtocol {
    var logger = Logger(label: "tally")
    logger.logLevel = configuration.logLevel
    TallyMetrics.bootstrap()
    let pool = PostgresPool(url: configuration.databaseURL, size: configuration.poolSize, logger: logger)
    let services = TallyServices(pool: pool)
    try await Migrator(pool: pool, logger: logger).migrate()
    let router = buildRouter(services, configuration: configuration)
    var app = Application(
        router: router,
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "tally"),
        logger: logger)
    app.addServices(PoolService(pool: pool))
    return app
}

/// The router with every route and middleware; tests use it with `app.test(.router)`.
public func buildRouter(_ services: TallyServices, configuration: TallyConfiguration) -> Router<TallyRequestContext> {
    let router = Router(context: TallyRequestContext.self)
    router.add(middleware: MetricsMiddleware())
    router.add(middleware: TraceMiddleware())
    HealthController(pool: services.pool).addRoutes(to: router)
    addSystemAPIRoutes(to: router, services)
    return router
}

/// Closes the pool's connections when the service group shuts down.
struct PoolService: Service {
    let pool: PostgresPool

    func run() async throws {
        try? await gracefulShutdown()
        await pool.close()
    }
}
