import Logging
import TallyCore
import TallyStore

/// Everything `tally serve` can be told, from flags or the environment (see `tally serve --help`).
public struct TallyConfiguration: Sendable {
    /// Address to listen on. Default `127.0.0.1`: put nginx or another TLS proxy in front.
    public var host: String
    public var port: Int
    /// libpq conninfo or `postgres://` URI. Never logged.
    public var databaseURL: String
    /// Upper bound of PostgreSQL connections this instance opens.
    public var poolSize: Int
    /// Shared secret the gateway sends as `Authorization: Bearer …` on `/gateway/…` routes.
    /// When empty, gateway routes refuse every request.
    public var gatewaySecret: String
    public var logLevel: Logger.Level
    /// How often the price versions are re-read so a load by another instance is picked up.
    public var priceRefreshSeconds: Int
    /// A connection that sends nothing for this long — between requests, or in the middle of
    /// a request's head or body — is closed (slow or stalled clients hold nothing for long).
    public var idleTimeoutSeconds: Int
    /// Failed credentials (wrong key, access token or gateway secret) one client address may
    /// present per `failedAuthWindowSeconds` before it is answered `429 too_many_failed_auth`
    /// until the window ends; 0 turns the limit off.
    public var failedAuthLimit: Int
    public var failedAuthWindowSeconds: Int
    /// Proxies whose `X-Forwarded-For` names the client (for the failed-auth limit); empty:
    /// the TCP peer is the client.
    public var trustedProxies: IPAllowList
    /// How long an authorize hold stays open without a settlement or release (`TALLY_HOLD_TTL`).
    public var holdTTLSeconds: Int
    /// When authorize answers (`TALLY_HOLD_COMMIT`): `sync` (the default) after the hold's
    /// journal batch committed; `async` as soon as the hold is cut from the lease in memory
    /// (docs/enforcement.md).
    public var holdCommit: HoldCommitMode
    /// Journal transactions in flight at once (`TALLY_JOURNAL_CONCURRENCY`; default half the
    /// cores, 2–4); holds queued while they commit go out together in the next. Fewer: larger
    /// group commits, less CPU per hold; more: shorter waits when commits are slow.
    public var journalConcurrency: Int
    /// Log batches stored while their body still arrives, at most at once (`TALLY_INGEST_STREAMS`;
    /// at most half the pool is used; 0: every batch is read whole before it is stored).
    public var ingestStreams: Int
    /// The webhook dispatcher (docs/webhooks.md).
    public var webhooks: WebhookDispatchConfiguration
    /// How often this instance folds committed charges into balances (`TALLY_SETTLE_INTERVAL`,
    /// milliseconds; 0: this instance does not fold, others must).
    public var settleIntervalMilliseconds: Int
    /// How often it rolls committed usage up into `usage_daily` (`TALLY_ROLLUP_INTERVAL`, seconds).
    public var rollUpIntervalSeconds: Int

    /// Every default, defined once: this `init`, `tally serve` and its help text read them here.
    public enum Defaults {
        public static let host = "127.0.0.1"
        public static let port = 8080
        public static let poolSize = 16
        public static let logLevel = Logger.Level.info
        public static let priceRefreshSeconds = 5
        public static let holdTTLSeconds = 600
        public static let holdCommit = HoldCommitMode.sync
        public static let journalConcurrency = HoldBook.defaultJournalConcurrency
        public static let idleTimeoutSeconds = 60
        public static let failedAuthLimit = 20
        public static let failedAuthWindowSeconds = 60
        public static let settleIntervalMilliseconds = 100
        public static let rollUpIntervalSeconds = 5
        public static let ingestStreams = 8
    }

    public init(
        host: String = Defaults.host, port: Int = Defaults.port, databaseURL: String,
        poolSize: Int = Defaults.poolSize, gatewaySecret: String = "",
        logLevel: Logger.Level = Defaults.logLevel,
        priceRefreshSeconds: Int = Defaults.priceRefreshSeconds, holdTTLSeconds: Int = Defaults.holdTTLSeconds,
        holdCommit: HoldCommitMode = Defaults.holdCommit, journalConcurrency: Int = Defaults.journalConcurrency,
        webhooks: WebhookDispatchConfiguration = WebhookDispatchConfiguration(),
        idleTimeoutSeconds: Int = Defaults.idleTimeoutSeconds, failedAuthLimit: Int = Defaults.failedAuthLimit,
        failedAuthWindowSeconds: Int = Defaults.failedAuthWindowSeconds,
        trustedProxies: IPAllowList = IPAllowList(ranges: []),
        settleIntervalMilliseconds: Int = Defaults.settleIntervalMilliseconds,
        rollUpIntervalSeconds: Int = Defaults.rollUpIntervalSeconds, ingestStreams: Int = Defaults.ingestStreams
    ) {
        self.host = host
        self.port = port
        self.databaseURL = databaseURL
        self.poolSize = poolSize
        self.gatewaySecret = gatewaySecret
        self.logLevel = logLevel
        self.priceRefreshSeconds = priceRefreshSeconds
        self.holdTTLSeconds = holdTTLSeconds
        self.holdCommit = holdCommit
        self.journalConcurrency = journalConcurrency
        self.webhooks = webhooks
        self.idleTimeoutSeconds = idleTimeoutSeconds
        self.failedAuthLimit = failedAuthLimit
        self.failedAuthWindowSeconds = failedAuthWindowSeconds
        self.trustedProxies = trustedProxies
        self.settleIntervalMilliseconds = settleIntervalMilliseconds
        self.rollUpIntervalSeconds = rollUpIntervalSeconds
        self.ingestStreams = ingestStreams
    }
}
