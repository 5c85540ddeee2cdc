import TallyCore
import TallyPostgres
import TallyStore

/// The parts of a running Tally: one pool and the repositories and caches over it.
public struct TallyServices: Sendable {
    public let pool: PostgresPool
    public let users: any UserRepository
    public let priceVersions: any PriceRepository
    public let prices: PriceCatalog
    /// Months retention dropped, whose lines ingest rejects.
    public let droppedLogMonths: DroppedLogMonths
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

    public init(
        pool: PostgresPool, ingestLimits: IngestLimits = IngestLimits(),
        holdTTLSeconds: Int = TallyConfiguration.Defaults.holdTTLSeconds,
        holdCommit: HoldCommitMode = TallyConfiguration.Defaults.holdCommit,
        journalConcurrency: Int = TallyConfiguration.Defaults.journalConcurrency
    ) {
        self.pool = pool
        var ingestLimits = ingestLimits
        // A streamed batch holds a connection while its body arrives: leave half the pool free.
        ingestLimits.maxStreamedBatches = min(ingestLimits.maxStreamedBatches, pool.size / 2)
        self.ingestLimits = ingestLimits
        users = PostgresUserRepository(pool: pool)
        priceVersions = PostgresPriceRepository(pool: pool)
        prices = PriceCatalog(repository: priceVersions)
        tokens = TokenDirectory(pool: pool)
        droppedLogMonths = DroppedLogMonths(pool: pool)
        ingestor = Ingestor(
            prices: prices, tokens: tokens, repository: PostgresIngestRepository(pool: pool), limits: ingestLimits,
            droppedMonths: droppedLogMonths)
        accounts = AccountRepository(pool: pool)
        apiKeys = TokenRepository(pool: pool)
        groups = GroupRepository(pool: pool)
        channels = ChannelRepository(pool: pool)
        balances = BalanceRepository(pool: pool)
        logs = LogRepository(pool: pool)
        access = AccessDirectory(pool: pool)
        holds = PostgresHoldRepository(pool: pool)
        holdBook = HoldBook(
            repository: PostgresLeaseRepository(pool: pool), holdTTLSeconds: holdTTLSeconds, mode: holdCommit,
            journalConcurrency: journalConcurrency)
        authorizer = Authorizer(directory: access, prices: prices, holds: holdBook, limiter: RateLimiter())
        exporter = UsageExporter(pool: pool)
        statements = StatementRepository(pool: pool)
    }
}
