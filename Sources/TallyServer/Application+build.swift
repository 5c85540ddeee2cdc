import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import TallyCore
import TallyPostgres
import TallyStore

/// The parts of a running Tally: one pool and the repositories and caches over it.
public struct TallyServices: Sendable {
    public let pool: PostgresPool
    public let users: any UserRepository
    public let priceVersions: any PriceRepository
    public let prices: PriceCatalog
    public let tokens: TokenDirectory
    public let ingestor: Ingestor
    public let ingestLimits: IngestLimits
    // System API (issue 6).
    public let accounts: AccountRepository
    public let apiKeys: TokenRepository
    public let groups: GroupRepository
    public let channels: ChannelRepository
    public let balances: BalanceRepository
    public let logs: LogRepository
    // Enforcement (issue 7).
    public let access: AccessDirectory
    public let holds: any HoldRepository
    public let holdBook: HoldBook
    public let authorizer: Authorizer
    // Exports and statements (issue 8).
    public let exporter: UsageExporter
    public let statements: StatementRepository

    public init(pool: PostgresPool, ingestLimits: IngestLimits = IngestLimits(), holdTTLSeconds: Int = 600,
                holdCommit: HoldCommitMode = .sync) {
        self.pool = pool
        self.ingestLimits = ingestLimits
        users = PostgresUserRepository(pool: pool)
        priceVersions = PostgresPriceRepository(pool: pool)
        prices = PriceCatalog(repository: priceVersions)
        tokens = TokenDirectory(pool: pool)
        ingestor = Ingestor(prices: prices, tokens: tokens, repository: PostgresIngestRepository(pool: pool), limits: ingestLimits)
        accounts = AccountRepository(pool: pool)
        apiKeys = TokenRepository(pool: pool)
        groups = GroupRepository(pool: pool)
        channels = ChannelRepository(pool: pool)
        balances = BalanceRepository(pool: pool)
        logs = LogRepository(pool: pool)
        access = AccessDirectory(pool: pool)
        holds = PostgresHoldRepository(pool: pool)
        holdBook = HoldBook(repository: PostgresLeaseRepository(pool: pool), holdTTLSeconds: holdTTLSeconds, mode: holdCommit)
        authorizer = Authorizer(directory: access, prices: prices, holds: holdBook, limiter: RateLimiter())
        exporter = UsageExporter(pool: pool)
        statements = StatementRepository(pool: pool)
    }

    /// `user:<id>` or `token:<id>`.
    private static func leaseAccount(_ text: Substring) -> LeaseAccount? {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let id = Int64(parts[1]) else { return nil }
        switch parts[0] {
        case "user": return .user(id)
        case "token": return .token(id)
        default: return nil
        }
    }

    /// Applies a `tally_changes` notification to every cache that holds the row.
    @Sendable public func applyChange(_ payload: String) {
        // A settlement overdrew the account, or another instance ran short of it: give the lease back.
        let leaseEvents: [(String, (LeaseAccount) -> LeaseEvent)] = [("overdrawn:", LeaseEvent.overdrawn),
                                                                      ("lease-wanted:", LeaseEvent.leaseWanted)]
        for (prefix, event) in leaseEvents where payload.hasPrefix(prefix) {
            if let account = Self.leaseAccount(payload.dropFirst(prefix.count)) { holdBook.notice(event(account)) }
            return
        }
        access.invalidate(payload)
        if !payload.hasPrefix("channel:") { tokens.invalidateAll() }
        // A key's limits changed (unlimited or not, its quota): its lease is taken afresh.
        if payload.hasPrefix("token:"), let account = Self.leaseAccount(payload[...]) {
            holdBook.notice(.accountChanged(account))
        }
        if payload == "*" { Task { try? await holdBook.returnIdleLeases(everything: true) } }
    }
}

/// Builds the HTTP application: migrates the database, wires controllers and middleware.
public func buildApplication(_ configuration: TallyConfiguration) async throws -> some ApplicationProtocol {
    var logger = Logger(label: "tally")
    logger.logLevel = configuration.logLevel
    TallyMetrics.bootstrap()
    let pool = PostgresPool(url: configuration.databaseURL, size: configuration.poolSize, logger: logger)
    let services = TallyServices(pool: pool, holdTTLSeconds: configuration.holdTTLSeconds,
                                 holdCommit: configuration.holdCommit)
    let migrator = Migrator(pool: pool, logger: logger)
    try await migrator.migrate()
    try await migrator.createLogPartitions(months: 3)
    try await services.prices.reload()
    try await services.holdBook.start()
    let router = buildRouter(services, configuration: configuration)
    var app = Application(
        router: router,
        server: .http1(configuration: .init(
            // Twice the largest body any route reads (an ingest batch), so its 413 goes out first.
            additionalChannelHandlers: [RequestBodyLimitHandler(maxBytes: 2 * services.ingestLimits.maxBytes)],
            idleTimeout: .seconds(Int64(configuration.idleTimeoutSeconds)))),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "tally"),
        logger: logger)
    app.addServices(
        PoolService(pool: pool),
        PriceRefreshService(prices: services.prices, interval: .seconds(configuration.priceRefreshSeconds), logger: logger),
        LogPartitionService(migrator: migrator, interval: .seconds(86_400), logger: logger),
        HoldSweeperService(holds: services.holds, interval: .seconds(1), logger: logger),
        LeaseService(book: services.holdBook, logger: logger),
        ChangeListenerService(databaseURL: configuration.databaseURL, onChange: services.applyChange,
                              onReconnect: { services.applyChange("*") }, logger: logger))
    if configuration.webhooks.enabled {
        app.addServices(WebhookDispatcher(repository: WebhookRepository(pool: pool), configuration: configuration.webhooks, logger: logger))
    }
    return app
}

/// The router with every route and middleware; tests use it with `app.test(.router)`.
public func buildRouter(_ services: TallyServices, configuration: TallyConfiguration) -> Router<TallyRequestContext> {
    let router = Router(context: TallyRequestContext.self)
    router.add(middleware: MetricsMiddleware())
    router.add(middleware: TraceMiddleware())
    let failedAuth = configuration.failedAuthLimit > 0
        ? FailedAuthLimiter(limit: configuration.failedAuthLimit, window: .seconds(configuration.failedAuthWindowSeconds)) : nil
    router.add(middleware: ClientAddressMiddleware(trustedProxies: configuration.trustedProxies))
    router.add(middleware: FailedAuthMiddleware(limiter: failedAuth))
    HealthController(pool: services.pool).addRoutes(to: router)
    ConsoleController(files: .bundled).addRoutes(to: router)
    let gateway = router.group("/gateway/v1").add(middleware: GatewayAuthMiddleware(secret: configuration.gatewaySecret))
    IngestController(ingestor: services.ingestor, limits: services.ingestLimits).addRoutes(to: gateway)
    EnforcementController(authorizer: services.authorizer, holds: services.holds, holdBook: services.holdBook).addRoutes(to: gateway)
    let pricing = PricingController(prices: services.prices, repository: services.priceVersions)
    pricing.addPublicRoutes(to: router)
    let admin = router.group("/api/admin").add(middleware: UserAuthMiddleware(users: services.users, minimumRole: .admin))
    pricing.addAdminRoutes(to: admin)
    addSystemAPIRoutes(to: router, services)
    ExportController(exporter: services.exporter, statements: services.statements,
                     userAuth: UserAuthMiddleware(users: services.users),
                     adminAuth: UserAuthMiddleware(users: services.users, minimumRole: .admin)).addRoutes(to: router)
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

/// Runs `work` every `interval` until graceful shutdown begins; a failed round is logged as
/// `failure` and the next one runs on time.
func runPeriodically(every interval: Duration, logger: Logger, failure: Logger.Message,
                     _ work: () async throws -> Void) async {
    while !Task.isShuttingDownGracefully {
        do { try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) } } catch { return }
        do { try await work() } catch {
            logger.warning(failure, metadata: ["error": "\(error)"])
        }
    }
}

/// Picks up price versions loaded by other instances.
struct PriceRefreshService: Service {
    let prices: PriceCatalog
    let interval: Duration
    let logger: Logger

    func run() async throws {
        await runPeriodically(every: interval, logger: logger, failure: "price refresh failed") {
            try await prices.refreshIfChanged()
        }
    }
}

/// Creates the `request_logs` partitions of the current and the next two months once a day, so
/// a month never starts without its partition (ingest would otherwise create it on the month's
/// first batch, taking a lock on `request_logs` while other batches wait).
struct LogPartitionService: Service {
    let migrator: Migrator
    let interval: Duration
    let logger: Logger

    func run() async throws {
        await runPeriodically(every: interval, logger: logger, failure: "creating request_logs partitions failed") {
            try await migrator.createLogPartitions(months: 3)
        }
    }
}
