import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import TallyCore
import TallyPostgres
import TallyStore

extension TallyServices {
    /// Applies a `tally_changes` notification to every cache that holds the row.
    @Sendable public func applyChange(_ change: ChangeNotice) {
        switch change {
        // A settlement overdrew the account, or another instance ran short of it: give the lease back.
        case .overdrawn(let account): holdBook.notice(.overdrawn(account))
        case .leaseWanted(let account): holdBook.notice(.leaseWanted(account))
        case .token(let id):
            forget(change)
            // A key's limits changed (unlimited or not, its quota): its lease is taken afresh.
            holdBook.notice(.accountChanged(.token(id)))
        case .user(let id):
            forget(change)
            // The balance may have been lowered (an admin's subtract or override): units leased
            // before no longer exist, so the lease is taken afresh from what is left.
            holdBook.notice(.accountChanged(.user(id)))
        case .channel: access.invalidate(change)
        case .group: forget(change)
        case .prices: Task { try? await prices.refreshIfChanged() }
        case .logsDropped: Task { try? await droppedLogMonths.refresh() }
        case .everything, .import:
            // An import sets balances and keys wholesale: every lease is taken afresh too.
            forget(change)
            Task { try? await holdBook.returnIdleLeases(everything: true) }
            Task { try? await prices.refreshIfChanged() }
            Task { try? await droppedLogMonths.refresh() }
        }
    }

    /// Drops the cached keys `change` names, and every key the ingest directory holds.
    private func forget(_ change: ChangeNotice) {
        access.invalidate(change)
        tokens.invalidateAll()
    }
}

/// A stop (SIGTERM, SIGINT) that came while start-up still waited for the change listener: the
/// server never served, and nothing failed.
public struct StoppedDuringStartup: Error {}

/// Builds the HTTP application: controllers, middleware and background services. Before the
/// server takes requests it migrates the database, loads the prices, registers the instance's
/// leases and waits for the change listener to listen; the background services wait for that
/// (``StartupGate``).
public func buildApplication(_ configuration: TallyConfiguration) async throws -> some ApplicationProtocol {
    var logger = Logger(label: "tally")
    logger.logLevel = configuration.logLevel
    TallyMetrics.bootstrap()
    // 0 until the instance's first batch: the series exists from the start (after a restart of
    // every instance with the gateway silent the ingest-stalled alert, time() - max(…) > 300,
    // must still fire), and a restarted instance does not raise the max (its start time did, so
    // a rolling deploy or a crash-looping instance held the page back however long billing had
    // stopped).
    IngestMetrics.lastBatch.record(0)
    if configuration.gatewaySecret.isEmpty {
        logger.warning(
            "no gateway secret (TALLY_GATEWAY_SECRET): every /gateway/v1 call (authorize, release, logs) is refused with 401 until one is set"
        )
    }
    let pool = PostgresPool(url: configuration.databaseURL, size: configuration.poolSize, logger: logger)
    var ingestLimits = IngestLimits()
    ingestLimits.maxStreamedBatches = configuration.ingestStreams
    let services = TallyServices(
        pool: pool, ingestLimits: ingestLimits, holdTTLSeconds: configuration.holdTTLSeconds,
        holdCommit: configuration.holdCommit, journalConcurrency: configuration.journalConcurrency)
    let migrator = Migrator(pool: pool, logger: logger)
    let router = buildRouter(services, configuration: configuration)
    var app = Application(
        router: router,
        server: .http1(
            configuration: .init(
                // Twice the largest body any route reads (an ingest batch), so its 413 goes out first.
                additionalChannelHandlers: [RequestBodyLimitHandler(maxBytes: 2 * services.ingestLimits.maxBytes)],
                idleTimeout: .seconds(Int64(configuration.idleTimeoutSeconds)))),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "tally"),
        logger: logger)
    let started = StartupGate(), listening = StartupGate()
    app.beforeServerStarts {
        try await migrator.migrate()
        try await migrator.createLogPartitions(months: 3)
        try await services.prices.reload()
        try await services.droppedLogMonths.refresh()
        try await services.holdBook.start()
        await cancelWhenGracefulShutdown { await listening.wait() }
        guard listening.isOpen else { throw StoppedDuringStartup() }
        started.open()
    }
    app.addServices(PoolService(pool: pool))
    // The change listener runs from the start: the server takes requests once it listens.
    app.addServices(
        ChangeListenerService(
            databaseURL: configuration.databaseURL, listening: listening, onChange: services.applyChange,
            logger: logger))
    app.addServices(
        backgroundServices(services, migrator: migrator, configuration: configuration, logger: logger)
            .map { AfterStartup(gate: started, service: $0) })
    return app
}

/// The services that run beside the HTTP server once it started.
private func backgroundServices(
    _ services: TallyServices, migrator: Migrator, configuration: TallyConfiguration,
    logger: Logger
) -> [any Service] {
    var background: [any Service] = [
        PriceRefreshService(
            prices: services.prices, droppedLogMonths: services.droppedLogMonths,
            interval: .seconds(configuration.priceRefreshSeconds), logger: logger),
        LogPartitionService(migrator: migrator, interval: .seconds(86_400), logger: logger),
        HoldSweeperService(holds: services.holds, interval: .seconds(1), logger: logger),
    ]
    if configuration.webhooks.enabled {
        background.append(
            WebhookDispatcher(
                repository: WebhookRepository(pool: services.pool),
                configuration: configuration.webhooks, logger: logger))
    }
    // After the dispatcher, so stopped before it: its last fold does not wait for a slow
    // receiver's deliveries (the events it writes go out from another instance, or after the
    // restart).
    if configuration.settleIntervalMilliseconds > 0 {
        background.append(
            SettlerService(
                settler: Settler(pool: services.pool),
                balanceInterval: .milliseconds(configuration.settleIntervalMilliseconds),
                rollUpInterval: .seconds(configuration.rollUpIntervalSeconds), logger: logger))
    }
    // Last, so stopped first after the HTTP server (services stop in reverse order, one after
    // the other): its leases go back before a webhook round or the settler's last fold, which
    // may take their time, and before the shutdown's deadline (tally serve) can cut it short.
    background.append(LeaseService(book: services.holdBook, logger: logger))
    return background
}

/// The router with every route and middleware; tests use it with `app.test(.router)`. Each
/// controller lists its routes in one `RouteCollection`; the System API's user and admin groups
/// (each behind its `UserAuthMiddleware`) are created here, once.
public func buildRouter(_ services: TallyServices, configuration: TallyConfiguration) -> Router<TallyRequestContext> {
    let router = Router(context: TallyRequestContext.self)
    router.add(middleware: MetricsMiddleware())
    router.add(middleware: TraceMiddleware())
    router.add(middleware: ErrorMiddleware())
    router.add(middleware: ClientAddressMiddleware(trustedProxies: configuration.trustedProxies))
    let failedAuthWindow = Duration.seconds(configuration.failedAuthWindowSeconds)
    let failedAuth =
        configuration.failedAuthLimit > 0
        ? FailedAuthLimiter(limit: configuration.failedAuthLimit, window: failedAuthWindow) : nil
    router.add(middleware: FailedAuthMiddleware(limiter: failedAuth))

    let models = ModelAvailability(channels: services.channels, prices: services.prices)
    let exports = ExportStreamer(
        exporter: services.exporter,
        slots: ExportSlots(poolSize: configuration.poolSize, streams: services.ingestLimits.maxStreamedBatches))
    // Public, and the API-key routes (each handler authenticates the key).
    router.addRoutes(HealthController(pool: services.pool).routes)
    router.addRoutes(ConsoleController(files: .bundled).routes)
    router.addRoutes(PricingController(prices: services.prices).routes, atPath: "/api")
    router.addRoutes(
        KeyController(
            authenticator: APIKeyAuthenticator(tokens: services.apiKeys), models: models, groups: services.groups
        ).routes)

    let gateway = router.group("/gateway/v1")
        .add(middleware: GatewayAuthMiddleware(secret: configuration.gatewaySecret))
    for routes in [
        IngestController(ingestor: services.ingestor, limits: services.ingestLimits).routes,
        EnforcementController(authorizer: services.authorizer, holds: services.holds, holdBook: services.holdBook)
            .routes,
    ] { gateway.addRoutes(routes) }

    let user = router.group("/api").add(middleware: UserAuthMiddleware(users: services.users))
    for routes in [
        AccountController(
            accounts: services.accounts, balances: services.balances, groups: services.groups,
            models: models
        ).routes,
        TokenController(tokens: services.apiKeys).routes,
        LogController(logs: services.logs).routes,
        UsageController(streamer: exports).routes,
    ] { user.addRoutes(routes) }

    let admin = router.group("/api").add(middleware: UserAuthMiddleware(users: services.users, minimumRole: .admin))
    for routes in [
        UserController(accounts: services.accounts, tokens: services.apiKeys).routes,
        TopUpController(balances: services.balances).routes,
        RedemptionController(balances: services.balances).routes,
        GroupController(groups: services.groups).routes,
        ChannelController(channels: services.channels).routes,
        LogLookupController(logs: services.logs).routes,
        AdminLogController(logs: services.logs).routes,
        PriceVersionController(prices: services.prices, repository: services.priceVersions).routes,
        ExportController(streamer: exports).routes,
        StatementController(statements: services.statements).routes,
    ] { admin.addRoutes(routes) }
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
/// `failure` (once per 10 s while rounds keep failing) and the next one runs on time.
func runPeriodically(
    every interval: Duration, logger: Logger, failure: Logger.Message,
    _ work: () async throws -> Void
) async {
    while !Task.isShuttingDownGracefully {
        do { try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) } } catch { return }
        do { try await work() } catch {
            RepeatedWarningLog.shared.warning(failure, metadata: ["error": "\(error)"], to: logger)
        }
    }
}

/// Picks up price versions loaded, and months of request rows dropped, by other processes,
/// should their notice be lost.
struct PriceRefreshService: Service {
    let prices: PriceCatalog
    let droppedLogMonths: DroppedLogMonths
    let interval: Duration
    let logger: Logger

    func run() async throws {
        // Each its own failure: a price version this instance cannot read (a newer instance's,
        // in a rolling upgrade) must not also stop it learning of dropped months.
        await runPeriodically(every: interval, logger: logger, failure: "refreshing the dropped months failed") {
            do { try await prices.refreshIfChanged() } catch {
                RepeatedWarningLog.shared.warning("price refresh failed", metadata: ["error": "\(error)"], to: logger)
            }
            try await droppedLogMonths.refresh()
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
