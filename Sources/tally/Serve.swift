import ArgumentParser
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import TallyCore
import TallyServer
import TallyStore

struct Serve: AsyncParsableCommand {
    typealias Defaults = TallyConfiguration.Defaults

    static let configuration = CommandConfiguration(
        abstract: "Run the HTTP server (gateway routes, System API, admin, /metrics).",
        discussion:
            "Each flag falls back to its environment variable, then to the default. SIGTERM or SIGINT shut down gracefully."
    )

    @Option(help: "Address to listen on. Env: TALLY_HOST. Default: \(Defaults.host) (put a TLS proxy in front).")
    var host: String?

    @Option(help: "TCP port. Env: TALLY_PORT. Default: \(Defaults.port).")
    var port: Int?

    @OptionGroup var database: DatabaseOptions

    @Option(
        help:
            "PostgreSQL connections of the pool, at most (one more listens for changes). Env: TALLY_POOL_SIZE. Default: \(Defaults.poolSize)."
    )
    var poolSize: Int?

    @Option(
        help:
            "Secret the gateway sends as 'Authorization: Bearer …' on /gateway routes. Env: TALLY_GATEWAY_SECRET (preferred: a command line is visible to every local user). Without it gateway routes refuse every call."
    )
    var gatewaySecret: String?

    @Option(
        help: ArgumentHelp(
            "Seconds an authorize hold stays open without a settlement or release before the "
                + "sweeper returns it. Env: TALLY_HOLD_TTL. Default: \(Defaults.holdTTLSeconds)."))
    var holdTTL: Int?

    @Option(
        help: ArgumentHelp(
            "sync: authorize answers once its hold is journaled in PostgreSQL (group commit); "
                + "async: as soon as the hold is cut from this instance's lease in memory, the journal "
                + "following within milliseconds (faster; see docs/enforcement.md for what a crash then "
                + "costs). Env: TALLY_HOLD_COMMIT. Default: \(Defaults.holdCommit.rawValue)."))
    var holdCommit: String?

    @Option(
        help: ArgumentHelp(
            "Hold journal transactions in flight at once (holds queued meanwhile go out together in "
                + "the next group commit; refills take half as many). Fewer: less CPU per hold; more: "
                + "shorter waits when commits are slow. Env: TALLY_JOURNAL_CONCURRENCY. "
                + "Default: half the cores, 2 to 4 (here \(Defaults.journalConcurrency))."))
    var journalConcurrency: Int?

    @Option(
        help: ArgumentHelp(
            "Milliseconds between folds of committed ingest charges into balances (every balance "
                + "read includes what is not folded yet, so this bounds the backlog, not exactness); "
                + "0: this instance does not fold (nor roll up), another must; else at least 10. "
                + "Env: TALLY_SETTLE_INTERVAL. "
                + "Default: \(Defaults.settleIntervalMilliseconds)."))
    var settleInterval: Int?

    @Option(
        help: ArgumentHelp(
            "Seconds between roll-ups of committed usage into the daily rollups (exports and "
                + "statements include what is not rolled up yet). Env: TALLY_ROLLUP_INTERVAL. "
                + "Default: \(Defaults.rollUpIntervalSeconds)."))
    var rollupInterval: Int?

    @Option(
        help: ArgumentHelp(
            "Log batches stored while their body still arrives (each part COPYed as it is priced), "
                + "at most at once; each holds a PostgreSQL connection for its upload, and at most half "
                + "the pool is used; 0: every batch is read whole first. Env: TALLY_INGEST_STREAMS. "
                + "Default: \(Defaults.ingestStreams)."))
    var ingestStreams: Int?

    @Option(
        help: ArgumentHelp(
            "trace, debug, info, notice, warning, error or critical. Env: TALLY_LOG_LEVEL. "
                + "Default: \(Defaults.logLevel.rawValue)."))
    var logLevel: String?

    @Option(
        help:
            "Deliver webhooks from this instance: on or off (instances share the outbox safely). Env: TALLY_WEBHOOKS. Default: on."
    )
    var webhooks: String?

    @Option(
        help: ArgumentHelp(
            "Attempts before a webhook event is dead-lettered. Env: TALLY_WEBHOOK_MAX_ATTEMPTS. "
                + "Default: \(WebhookDispatchConfiguration().maxAttempts) (retries spread over up to "
                + "about 10 hours)."))
    var webhookMaxAttempts: Int?

    @Option(
        help: ArgumentHelp(
            "Seconds allowed for one webhook delivery. Env: TALLY_WEBHOOK_TIMEOUT. "
                + "Default: \(WebhookDispatchConfiguration().timeout.components.seconds)."))
    var webhookTimeout: Int?

    @Option(
        help: ArgumentHelp(
            "Days a delivered or dead-lettered webhook event is kept, counted from its creation. "
                + "Env: TALLY_WEBHOOK_HISTORY_DAYS. "
                + "Default: \(WebhookDispatchConfiguration().historyDays)."))
    var webhookHistoryDays: Int?

    @Option(
        help: ArgumentHelp(
            "Seconds a connection may send nothing (between requests, or inside a request's head "
                + "or body) before it is closed. Env: TALLY_IDLE_TIMEOUT. "
                + "Default: \(Defaults.idleTimeoutSeconds)."))
    var idleTimeout: Int?

    @Option(
        help: ArgumentHelp(
            "Failed credentials (wrong API key, access token or gateway secret) one client "
                + "address may present per window before it gets 429 too_many_failed_auth until the "
                + "window ends; 0 turns the limit off. Env: TALLY_FAILED_AUTH_LIMIT. "
                + "Default: \(Defaults.failedAuthLimit)."))
    var failedAuthLimit: Int?

    @Option(
        help: ArgumentHelp(
            "Length of that window in seconds. Env: TALLY_FAILED_AUTH_WINDOW. "
                + "Default: \(Defaults.failedAuthWindowSeconds)."))
    var failedAuthWindow: Int?

    @Option(
        help: ArgumentHelp(
            "Comma-separated addresses or CIDR ranges of proxies whose X-Forwarded-For names the "
                + "client (for the failed-auth limit and API keys' IP allow-lists); without it the TCP "
                + "peer is the client. Env: TALLY_TRUSTED_PROXIES. Default: none."))
    var trustedProxies: String?

    func run() async throws {
        // A variable set to nothing (`TALLY_HOST=` in an environment file) counts as unset, as
        // systemd's and docker's files make it easy to leave one empty.
        let environment = ProcessInfo.processInfo.environment.filter { !$0.value.isEmpty }
        let levelName = logLevel ?? environment["TALLY_LOG_LEVEL"] ?? Defaults.logLevel.rawValue
        guard let level = Logger.Level(rawValue: levelName) else {
            throw ValidationError("unknown log level \"\(levelName)\"")
        }
        let configuration = TallyConfiguration(
            host: host ?? environment["TALLY_HOST"] ?? Defaults.host,
            port: try port ?? Self.integer(environment, "TALLY_PORT") ?? Defaults.port,
            databaseURL: try database.resolvedURL(),
            poolSize: try poolSize ?? Self.integer(environment, "TALLY_POOL_SIZE") ?? Defaults.poolSize,
            gatewaySecret: gatewaySecret ?? environment["TALLY_GATEWAY_SECRET"] ?? "",
            logLevel: level,
            holdTTLSeconds: try holdTTL ?? Self.integer(environment, "TALLY_HOLD_TTL") ?? Defaults.holdTTLSeconds,
            holdCommit: try Self.holdCommitMode(
                holdCommit ?? environment["TALLY_HOLD_COMMIT"] ?? Defaults.holdCommit.rawValue),
            journalConcurrency: try journalConcurrency ?? Self.integer(environment, "TALLY_JOURNAL_CONCURRENCY")
                ?? Defaults.journalConcurrency,
            webhooks: try webhookConfiguration(environment),
            idleTimeoutSeconds: try idleTimeout ?? Self.integer(environment, "TALLY_IDLE_TIMEOUT")
                ?? Defaults.idleTimeoutSeconds,
            failedAuthLimit: try failedAuthLimit ?? Self.integer(environment, "TALLY_FAILED_AUTH_LIMIT")
                ?? Defaults.failedAuthLimit,
            failedAuthWindowSeconds: try failedAuthWindow ?? Self.integer(environment, "TALLY_FAILED_AUTH_WINDOW")
                ?? Defaults.failedAuthWindowSeconds,
            trustedProxies: try Self.proxies(trustedProxies ?? environment["TALLY_TRUSTED_PROXIES"] ?? ""),
            settleIntervalMilliseconds: try settleInterval ?? Self.integer(environment, "TALLY_SETTLE_INTERVAL")
                ?? Defaults.settleIntervalMilliseconds,
            rollUpIntervalSeconds: try rollupInterval ?? Self.integer(environment, "TALLY_ROLLUP_INTERVAL")
                ?? Defaults.rollUpIntervalSeconds,
            ingestStreams: try ingestStreams ?? Self.integer(environment, "TALLY_INGEST_STREAMS")
                ?? Defaults.ingestStreams)
        try Self.checkGatewaySecret(configuration.gatewaySecret)
        // getaddrinfo takes the port as text and wraps it (70000 binds 4464, 0 any free port).
        guard (1...65_535).contains(configuration.port) else {
            throw ValidationError("--port must be within 1…65535, got \(configuration.port)")
        }
        guard configuration.poolSize > 0 else { throw ValidationError("--pool-size must be at least 1") }
        guard configuration.holdTTLSeconds > 0 else { throw ValidationError("--hold-ttl must be at least 1 second") }
        guard configuration.journalConcurrency > 0 else {
            throw ValidationError("--journal-concurrency must be at least 1")
        }
        // Milliseconds, where every other interval is seconds: 1 meant as "1 s" would fold and
        // roll up a thousand times a second.
        guard configuration.settleIntervalMilliseconds == 0 || configuration.settleIntervalMilliseconds >= 10 else {
            throw ValidationError("--settle-interval is in milliseconds: 0 (off) or at least 10")
        }
        guard configuration.rollUpIntervalSeconds > 0 else {
            throw ValidationError("--rollup-interval must be at least 1 second")
        }
        guard configuration.ingestStreams >= 0 else { throw ValidationError("--ingest-streams must be ≥ 0") }
        guard configuration.idleTimeoutSeconds > 0 else {
            throw ValidationError("--idle-timeout must be at least 1 second")
        }
        guard configuration.failedAuthLimit >= 0, configuration.failedAuthWindowSeconds > 0 else {
            throw ValidationError("--failed-auth-limit must be ≥ 0 and --failed-auth-window ≥ 1")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let app = try await buildApplication(configuration)
        var group = ServiceGroupConfiguration(
            services: [app], gracefulShutdownSignals: [.sigterm, .sigint], logger: app.logger)
        // Below systemd's TimeoutStopSec (30 s): a drain that outlasts it (a slow reader of a
        // large export keeps its connection busy) is cut short, and the leases still go back
        // (LeaseService, bounded at 10 s) before the unit would be killed.
        group.maximumGracefulShutdownDuration = Self.shutdownDeadline
        do {
            try await ServiceGroup(configuration: group).run()
        } catch is StoppedDuringStartup {
            // Asked to stop, and stopped: exit 0, as a stop after start-up does.
            app.logger.info("stopped before start-up had finished")
        }
    }

    /// How long a graceful shutdown (SIGTERM, SIGINT) may take before what still runs is cancelled.
    static let shutdownDeadline: Duration = .seconds(15)

    private static func proxies(_ text: String) throws -> IPAllowList {
        do throws(IPParseError) { return try IPAllowList.parse(text) } catch {
            throw ValidationError("--trusted-proxies: \"\(error.entry)\" \(error.reason)")
        }
    }

    private static func holdCommitMode(_ mode: String) throws -> HoldCommitMode {
        guard let parsed = HoldCommitMode(rawValue: mode) else {
            throw ValidationError("--hold-commit must be sync or async, got \"\(mode)\"")
        }
        return parsed
    }

    private func webhookConfiguration(_ environment: [String: String]) throws -> WebhookDispatchConfiguration {
        var webhook = WebhookDispatchConfiguration()
        switch webhooks ?? environment["TALLY_WEBHOOKS"] ?? "on" {
        case "on", "": webhook.enabled = true
        case "off": webhook.enabled = false
        case let other: throw ValidationError("--webhooks must be on or off, got \"\(other)\"")
        }
        if let attempts = try webhookMaxAttempts ?? Self.integer(environment, "TALLY_WEBHOOK_MAX_ATTEMPTS") {
            guard attempts >= 1 else { throw ValidationError("--webhook-max-attempts must be at least 1") }
            webhook.maxAttempts = attempts
        }
        if let days = try webhookHistoryDays ?? Self.integer(environment, "TALLY_WEBHOOK_HISTORY_DAYS") {
            guard days >= 1 else { throw ValidationError("--webhook-history-days must be at least 1") }
            webhook.historyDays = days
        }
        if let seconds = try webhookTimeout ?? Self.integer(environment, "TALLY_WEBHOOK_TIMEOUT") {
            guard seconds >= 1 else { throw ValidationError("--webhook-timeout must be at least 1 second") }
            webhook.timeout = .seconds(seconds)
        }
        return webhook
    }

    /// The gateway's credential: none (the gateway routes then refuse every call), or at least
    /// 16 bytes — a short one, or the example file's CHANGE-ME left in place, lets anyone who
    /// reaches `/gateway/` guess it and charge any account.
    static func checkGatewaySecret(_ secret: String) throws {
        guard secret.isEmpty || secret.utf8.count >= 16 else {
            throw ValidationError(
                "--gateway-secret (TALLY_GATEWAY_SECRET) must be at least 16 bytes;"
                    + " generate one with: head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
        }
    }

    private static func integer(_ environment: [String: String], _ name: String) throws -> Int? {
        guard let text = environment[name] else { return nil }
        guard let value = Int(text) else { throw ValidationError("\(name) must be a whole number, got \"\(text)\"") }
        return value
    }
}
