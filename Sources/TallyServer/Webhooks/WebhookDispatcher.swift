import Crypto
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import TallyCore
import TallyHTTP
import TallyStore

/// How the dispatcher delivers: see `tally serve --help` and docs/webhooks.md.
public struct WebhookDispatchConfiguration: Sendable {
    /// Run the dispatcher in this instance (several instances may; they share the work).
    public var enabled: Bool
    /// How often the outbox is polled when it was found empty.
    public var pollInterval: Duration
    /// Deliveries in flight at once, at most half of them to one endpoint.
    public var batchSize: Int
    /// Attempts before an event is dead-lettered.
    public var maxAttempts: Int
    /// Delay after the first failure; doubles with each further failure, up to `maxBackoff`.
    public var baseBackoff: Duration
    public var maxBackoff: Duration
    public var connectTimeout: Duration
    /// Time allowed for one delivery, connection included.
    public var timeout: Duration
    /// Delivered and dead-lettered events are deleted this many days after they were created.
    public var historyDays: Int

    public init(
        enabled: Bool = true, pollInterval: Duration = .seconds(1), batchSize: Int = 8, maxAttempts: Int = 20,
        baseBackoff: Duration = .seconds(5), maxBackoff: Duration = .seconds(3600),
        connectTimeout: Duration = .seconds(5), timeout: Duration = .seconds(10), historyDays: Int = 30
    ) {
        self.enabled = enabled
        self.pollInterval = pollInterval
        self.batchSize = batchSize
        self.maxAttempts = maxAttempts
        self.baseBackoff = baseBackoff
        self.maxBackoff = maxBackoff
        self.connectTimeout = connectTimeout
        self.timeout = timeout
        self.historyDays = historyDays
    }

    /// A claimed delivery is not retried by another dispatcher before this: the request's
    /// time limit plus a margin for recording the outcome.
    var lease: Duration { timeout + connectTimeout + .seconds(30) }
}

/// Drains the webhook outbox: claims due deliveries (`FOR UPDATE SKIP LOCKED`, so several
/// instances can run it), POSTs each signed event, marks 2xx answers delivered and retries the
/// rest with exponential backoff and jitter until `maxAttempts`, then dead-letters them.
public struct WebhookDispatcher: Service {
    let repository: WebhookRepository
    let client: HTTPClient
    let configuration: WebhookDispatchConfiguration
    let logger: Logger

    public init(
        repository: WebhookRepository, client: HTTPClient = HTTPClient(), configuration: WebhookDispatchConfiguration,
        logger: Logger = Logger(label: "tally.webhooks")
    ) {
        self.repository = repository
        self.client = client
        self.configuration = configuration
        self.logger = logger
    }

    /// Keeps up to `batchSize` deliveries in flight, at most half of them to one endpoint, and
    /// claims the next as each ends: a receiver that hangs until the timeout holds its own
    /// slots, not a round that every other endpoint's deliveries wait for.
    public func run() async throws {
        var nextPurge = ContinuousClock.now
        await withTaskGroup(of: DispatchEvent.self) { group in
            var sending = DeliveriesInFlight(
                limit: configuration.batchSize, perEndpoint: max(1, configuration.batchSize / 2))
            var polling = false
            while !Task.isShuttingDownGracefully, !Task.isCancelled {
                if ContinuousClock.now >= nextPurge {
                    await purgeHistory()
                    nextPurge = ContinuousClock.now + Self.purgeInterval
                }
                let drained = await claim(into: &group, sending: &sending)
                if drained, !polling {
                    polling = true
                    group.addTask { [pollInterval = configuration.pollInterval] in
                        try? await cancelWhenGracefulShutdown { try await Task.sleep(for: pollInterval) }
                        return .polled
                    }
                }
                // Never empty here: a delivery is in flight, or the poll is pending.
                switch await group.next() {
                case .sent(let endpoint): sending.remove(endpoint)
                case .polled: polling = false
                case nil: return
                }
            }
        }  // deliveries still in flight finish before the dispatcher stops
    }

    private enum DispatchEvent: Sendable {
        case sent(endpoint: Int64)
        case polled
    }

    /// Claims due deliveries into the free slots, one at a time so that each claim leaves out
    /// the endpoints that reached their share. True when the outbox had nothing more to give
    /// (or could not be read): the next claim waits for the poll interval.
    private func claim(into group: inout TaskGroup<DispatchEvent>, sending: inout DeliveriesInFlight) async -> Bool {
        while sending.hasRoom {
            let claimed: WebhookRepository.Claim
            do {
                claimed = try await repository.claimDue(
                    limit: 1, lease: configuration.lease, excluding: sending.fullEndpoints)
            } catch {
                RepeatedWarningLog.shared.warning(
                    "webhook outbox poll failed", metadata: ["error": "\(error)"], to: logger)
                return true
            }
            guard let delivery = claimed.deliveries.first else {
                if claimed.deadLettered > 0 { continue }  // a removed endpoint's row: more may be due
                return true
            }
            sending.add(delivery.endpointID)
            group.addTask {
                await deliver(delivery)
                return .sent(endpoint: delivery.endpointID)
            }
        }
        return false
    }

    /// One round, for tests: claims up to `batchSize` due deliveries and attempts each once,
    /// concurrently. Returns how many were claimed.
    @discardableResult
    public func runOnce() async throws -> Int {
        let due = try await repository.claimDue(limit: configuration.batchSize, lease: configuration.lease).deliveries
        await withTaskGroup(of: Void.self) { group in
            for delivery in due { group.addTask { await deliver(delivery) } }
        }
        return due.count
    }

    static let purgeInterval: Duration = .seconds(3600)
    static let purgedPerRound = 10_000

    /// Deletes the history older than `historyDays`, a bounded batch at a time so that no
    /// statement holds its locks for long. A failure is retried at the next purge.
    func purgeHistory() async {
        do {
            var purged = 0
            repeat {
                purged = try await repository.purgeHistory(
                    olderThanDays: configuration.historyDays, limit: Self.purgedPerRound)
                if purged > 0 { logger.info("purged webhook history", metadata: ["events": "\(purged)"]) }
            } while purged == Self.purgedPerRound && !Task.isShuttingDownGracefully
        } catch {
            logger.warning("purging the webhook history failed", metadata: ["error": "\(error)"])
        }
    }

    /// Sends one delivery and records the outcome.
    func deliver(_ delivery: WebhookDelivery) async {
        let body = Array(delivery.body.utf8)
        let timestamp = String(Int64(Date().timeIntervalSince1970))
        var request = HTTPClient.Request(
            method: .post, url: delivery.url,
            headers: [
                ("Content-Type", "application/json"),
                ("User-Agent", "tally-webhooks/1"),
                ("X-Tally-Event-Id", delivery.eventID),
                ("X-Tally-Event", delivery.type),
                ("X-Tally-Timestamp", timestamp),
                ("X-Tally-Delivery-Attempt", String(delivery.attempt)),
                (
                    "X-Tally-Signature",
                    WebhookSignature.header(secret: delivery.secret, timestamp: timestamp, body: body)
                ),
            ],
            body: body, connectTimeout: configuration.connectTimeout, timeout: configuration.timeout,
            maxResponseBytes: 64 << 10)
        // Its status is the receiver's answer; a long or slow page after a 2xx still delivered it.
        request.cutsLongBody = true
        let outcome: (status: Int?, error: String?)?
        do {
            let response = try await client.send(request)
            outcome = (response.status, response.isSuccess ? nil : "HTTP \(response.status)")
        } catch {
            // Cut short by a shutdown past its deadline: not the receiver's failure, so it is
            // given back, due at once (on the last attempt it was dead-lettered unanswered).
            outcome = Task.isCancelled ? nil : (nil, "\(error)")
        }
        // In a task of its own: the pool refuses a cancelled task that waits for a connection,
        // and what the receiver answered would be lost.
        await Task { await recordLogged(delivery, outcome) }.value
    }

    /// Records the outcome, or gives the claim back when there is none.
    private func recordLogged(_ delivery: WebhookDelivery, _ outcome: (status: Int?, error: String?)?) async {
        do {
            if let outcome {
                try await record(delivery, status: outcome.status, error: outcome.error)
            } else {
                try await repository.giveBack(delivery)
                logger.info(
                    "webhook delivery cut short by the shutdown; due again",
                    metadata: ["event_id": "\(delivery.eventID)"])
            }
        } catch {
            // The lease runs out and the delivery is retried: at least once, never lost.
            logger.warning(
                "recording a webhook delivery failed",
                metadata: ["event_id": "\(delivery.eventID)", "error": "\(error)"])
        }
    }

    private func record(_ delivery: WebhookDelivery, status: Int?, error: String?) async throws {
        var metadata: Logger.Metadata = [
            "event_id": "\(delivery.eventID)", "event": "\(delivery.type)",
            "endpoint": "\(delivery.endpointID)", "origin": "\(URLOrigin.of(delivery.url))",
            "attempt": "\(delivery.attempt)",
        ]
        guard let error else {
            try await repository.markDelivered(delivery, status: status ?? 0)
            WebhookMetrics.delivered.increment()
            logger.debug("webhook delivered", metadata: metadata)
            return
        }
        metadata["error"] = "\(error)"
        if delivery.attempt >= configuration.maxAttempts {
            try await repository.markFailed(delivery, status: status, error: error, retryAfter: nil)
            WebhookMetrics.dead.increment()
            logger.error("webhook dead-lettered after its last attempt", metadata: metadata)
        } else {
            let delay = WebhookBackoff.delay(
                afterAttempt: delivery.attempt, base: configuration.baseBackoff,
                maximum: configuration.maxBackoff)
            try await repository.markFailed(delivery, status: status, error: error, retryAfter: delay)
            WebhookMetrics.failed.increment()
            metadata["retry_in"] = "\(delay)"
            logger.warning("webhook delivery failed; will retry", metadata: metadata)
        }
    }
}

/// The deliveries a dispatcher has in flight, counted per endpoint.
struct DeliveriesInFlight {
    let limit: Int
    let perEndpoint: Int
    private var byEndpoint: [Int64: Int] = [:]

    init(limit: Int, perEndpoint: Int) {
        self.limit = limit
        self.perEndpoint = perEndpoint
    }

    var hasRoom: Bool { byEndpoint.values.reduce(0, +) < limit }

    /// The endpoints that may not be given another delivery now.
    var fullEndpoints: [Int64] { byEndpoint.filter { $0.value >= perEndpoint }.map(\.key).sorted() }

    mutating func add(_ endpoint: Int64) {
        byEndpoint[endpoint, default: 0] += 1
    }

    mutating func remove(_ endpoint: Int64) {
        byEndpoint[endpoint, default: 1] -= 1
        if byEndpoint[endpoint] == 0 { byEndpoint[endpoint] = nil }
    }
}

/// `X-Tally-Signature`: `sha256=` + hex HMAC-SHA256 keyed by the endpoint's secret over
/// `timestamp + "." + body` (docs/webhooks.md shows how receivers verify it).
public enum WebhookSignature {
    public static func header(secret: WebhookSecret, timestamp: String, body: [UInt8]) -> String {
        var message = Array(timestamp.utf8)
        message.append(UInt8(ascii: "."))
        message += body
        let code = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: Array(secret.value.utf8)))
        return "sha256=" + code.map { String(format: "%02x", $0) }.joined()
    }
}

/// Exponential backoff with jitter: after attempt n the delay is drawn from
/// [d/2, d] with d = base · 2^(n−1), capped at `maximum`, so endpoints that fail together do
/// not get retried in lockstep.
enum WebhookBackoff {
    static func delay(afterAttempt attempt: Int, base: Duration, maximum: Duration) -> Duration {
        let doublings = min(max(attempt - 1, 0), 30)
        let full = min(base * (1 << doublings), maximum)
        return full / 2 + (full / 2) * Double.random(in: 0...1)
    }
}

enum WebhookMetrics {
    static let delivered = Counter(label: "tally_webhook_deliveries_total", dimensions: [("result", "delivered")])
    static let failed = Counter(label: "tally_webhook_deliveries_total", dimensions: [("result", "failed")])
    static let dead = Counter(label: "tally_webhook_deliveries_total", dimensions: [("result", "dead")])
}
