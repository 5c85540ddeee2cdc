import Foundation
import TallyCore
import TallyPostgres

/// The HMAC key of an endpoint. Its description is redacted so that interpolating it into a
/// log line or an error never prints it.
public struct WebhookSecret: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public let value: String

    public init(_ value: String) { self.value = value }

    /// A new secret: `whsec_` + 32 characters from the system CSPRNG.
    public static func generate() -> WebhookSecret { WebhookSecret("whsec_" + Secrets.newAccessToken()) }

    public var description: String { "(secret)" }
    public var debugDescription: String { "(secret)" }
}

/// A configured endpoint, as listed (never with its secret).
public struct WebhookEndpoint: Sendable, Equatable {
    public let id: Int64
    public let url: String
    /// The event types it receives; empty means every type.
    public let events: [WebhookEventType]
    public let description: String
    public let createdAt: Date
    /// Outbox rows by status.
    public let pending: Int
    public let delivered: Int
    public let dead: Int
}

/// One claimed delivery: an event for one endpoint, with what is needed to send and sign it.
public struct WebhookDelivery: Sendable {
    public let id: Int64
    public let eventID: String
    public let type: String
    /// The event's `data` object, as JSON text.
    public let data: String
    public let createdAt: Date
    /// This attempt's number, from 1.
    public let attempt: Int
    public let endpointID: Int64
    public let url: String
    public let secret: WebhookSecret

    /// The request body: `{"id","type","created_at","data"}`, the same bytes on every attempt.
    public var body: String {
        #"{"id":\#(JSONText.quote(eventID)),"type":\#(JSONText.quote(type)),"created_at":\#(JSONText.quote(Self.timestamp(createdAt))),"data":\#(data)}"#
    }

    private static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: date)
    }
}

/// Webhook endpoints, thresholds and the outbox the dispatcher drains. Configuration changes
/// are audited in their transaction, like every admin action.
public struct WebhookRepository: Sendable {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    // MARK: Endpoints

    /// Adds an endpoint; without a `secret` one is generated. Returns the endpoint and the
    /// secret (the caller shows a generated one once).
    public func add(
        url: String, secret: WebhookSecret?, events: [WebhookEventType], description: String = "",
        by actor: Actor
    ) async throws -> (endpoint: WebhookEndpoint, secret: WebhookSecret) {
        try WebhookRules.checkURL(url)
        try TextRules.check(description, field: "description")
        let secret = secret ?? WebhookSecret.generate()
        guard secret.value.count >= 16, secret.value.count <= 256 else {
            throw StoreError.invalid("a webhook secret must be 16 to 256 characters")
        }
        try TextRules.check(secret.value, field: "secret")
        let types = TextArray(events.map(\.rawValue))
        let id = try await pool.transaction { connection in
            let id = try connection.query(
                """
                INSERT INTO webhook_endpoints (url, secret, events, description) VALUES ($1, $2, $3::text[], $4) RETURNING id
                """, [url, secret.value, types, description])[0].decode(0, as: Int64.self)
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "webhook.add", target: "webhook:\(id)",
                before: nil, after: ["url": URLOrigin.of(url), "events": types.elements.joined(separator: ",")])
            return id
        }
        guard let endpoint = try await list().first(where: { $0.id == id }) else {
            throw StoreError.internalError("webhook \(id) vanished after it was added")
        }
        return (endpoint, secret)
    }

    /// Endpoints not removed, by id, with their outbox counts.
    public func list() async throws -> [WebhookEndpoint] {
        try await pool.withConnection { connection in
            try connection.query(
                """
                SELECT e.id, e.url, e.events, e.description, e.created_at,
                       count(o.id) FILTER (WHERE o.status = 'pending'), count(o.id) FILTER (WHERE o.status = 'delivered'),
                       count(o.id) FILTER (WHERE o.status = 'dead')
                FROM webhook_endpoints e LEFT JOIN webhook_outbox o ON o.endpoint_id = e.id
                WHERE e.removed_at IS NULL GROUP BY e.id ORDER BY e.id
                """
            ).map { row in
                WebhookEndpoint(
                    id: try row.decode(0), url: try row.decode(1),
                    events: try row.decode(2, as: TextArray.self).elements.compactMap(WebhookEventType.init(rawValue:)),
                    description: try row.decode(3), createdAt: try row.decode(4), pending: try row.decode(5),
                    delivered: try row.decode(6), dead: try row.decode(7))
            }
        }
    }

    /// Removes an endpoint: its secret is erased and its undelivered events are dead-lettered. A
    /// delivery already on its way that then succeeds is recorded as delivered (`delivered`):
    /// the receiver has it.
    public func remove(id: Int64, by actor: Actor) async throws {
        try await pool.transaction { connection in
            let removed = try connection.query(
                """
                UPDATE webhook_endpoints SET removed_at = now(), secret = NULL WHERE id = $1 AND removed_at IS NULL RETURNING url
                """, [id])
            guard let row = removed.first else { throw StoreError.notFound("webhook \(id) not found") }
            let cancelled = try connection.query(
                """
                UPDATE webhook_outbox SET status = 'dead', last_error = 'endpoint removed' WHERE endpoint_id = $1 AND status = 'pending'
                """, [id]
            ).affectedRows
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "webhook.remove", target: "webhook:\(id)",
                before: ["url": URLOrigin.of(try row.decode(0, as: String.self))],
                after: ["undelivered_events_dropped": cancelled])
        }
    }

    // MARK: Thresholds

    /// Sets the global low-balance threshold (`user` nil) or one user's (`units` nil clears
    /// it, so the global one applies again). 0 turns balance.low off.
    public func setLowBalanceThreshold(units: Int64?, user: Int64?, by actor: Actor) async throws {
        if let units {
            guard units >= 0, units <= QuotaLimits.maximum else {
                throw StoreError.invalid("the threshold must be between 0 and \(QuotaLimits.maximum) units")
            }
        }
        try await pool.transaction { connection in
            let before: String
            if let user {
                let rows = try connection.query(
                    """
                    UPDATE users u SET low_balance_threshold = $2 FROM users old WHERE u.id = $1 AND old.id = u.id
                    RETURNING old.low_balance_threshold
                    """, [user, units])
                guard let row = rows.first else { throw StoreError.notFound("user \(user) not found") }
                before = row.text(0) ?? "global"
            } else {
                guard let units else {
                    throw StoreError.invalid("the global threshold cannot be cleared; set 0 to turn it off")
                }
                before = try connection.query(
                    """
                    UPDATE webhook_settings s SET low_balance_threshold = $1, updated_at = now() FROM webhook_settings old
                    RETURNING old.low_balance_threshold
                    """, [units])[0].decode(0, as: String.self)
            }
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "webhook.low_balance_threshold",
                target: user.map { "user:\($0)" } ?? "global",
                before: ["units": before], after: ["units": units.map(String.init) ?? "global"])
        }
    }

    /// The global low-balance threshold in units.
    public func globalLowBalanceThreshold() async throws -> Int64 {
        try await pool.withConnection { connection in
            try connection.query("SELECT low_balance_threshold FROM webhook_settings")[0].decode(0)
        }
    }

    // MARK: Dispatch

    /// What a claim took: deliveries to send, and how many due rows of removed endpoints it
    /// dead-lettered instead (they took part of its limit: more may be due).
    public struct Claim: Sendable {
        public var deliveries: [WebhookDelivery] = []
        public var deadLettered = 0
    }

    /// Claims up to `limit` due deliveries, none to the endpoints in `excluding`, and leases
    /// them for `lease`: until then no other dispatcher takes them, after it (a crash
    /// mid-delivery) they are due again.
    public func claimDue(limit: Int, lease: Duration, excluding endpoints: [Int64] = []) async throws -> Claim {
        try await pool.withConnection { connection in
            var claim = Claim()
            let rows = try connection.query(
                Self.claim, [limit, Self.seconds(lease), PostgresArray.integers(endpoints)])
            try rows.forEach { row in
                guard let eventID: String = try row.decodeOptional(1) else {
                    claim.deadLettered += 1  // a removed endpoint's row
                    return
                }
                claim.deliveries.append(
                    WebhookDelivery(
                        id: try row.decode(0), eventID: eventID, type: try row.decode(2), data: try row.decode(3),
                        createdAt: try row.decode(4), attempt: try row.decode(5), endpointID: try row.decode(6),
                        url: try row.decode(7), secret: WebhookSecret(try row.decode(8))))
            }
            return claim
        }
    }

    /// Records a 2xx answer. False when the claim was lost (its lease ended and another
    /// dispatcher took the row).
    @discardableResult
    public func markDelivered(_ delivery: WebhookDelivery, status: Int) async throws -> Bool {
        try await pool.withConnection { connection in
            try connection.query(Self.delivered, [delivery.id, delivery.attempt, status]).affectedRows == 1
        }
    }

    /// Records a failed attempt: due again after `retryAfter`, or dead-lettered when nil.
    @discardableResult
    public func markFailed(_ delivery: WebhookDelivery, status: Int?, error: String, retryAfter: Duration?) async throws
        -> Bool
    {
        try await pool.withConnection { connection in
            try connection.query(
                Self.failed,
                [
                    delivery.id, delivery.attempt, status, String(error.prefix(500)),
                    retryAfter.map(Self.seconds),
                ]
            ).affectedRows == 1
        }
    }

    /// Gives a claim back unanswered (its dispatcher stopped while sending): due again at once,
    /// with no failure recorded. The attempt stays counted (the count fences late outcomes of
    /// earlier claims, so it only grows), but the next claim goes out even past the last
    /// attempt: a delivery is dead-lettered only after a receiver's failure. False when the
    /// claim was lost.
    @discardableResult
    public func giveBack(_ delivery: WebhookDelivery) async throws -> Bool {
        try await pool.withConnection { connection in
            try connection.query(Self.givenBack, [delivery.id, delivery.attempt]).affectedRows == 1
        }
    }

    /// Deletes up to `limit` delivered or dead-lettered events created more than `days` days
    /// ago, oldest first; returns how many. Pending events are never deleted. Creation dates an
    /// event: with the default schedule it leaves the queue within a day of it.
    public func purgeHistory(olderThanDays days: Int, limit: Int) async throws -> Int {
        try await pool.withConnection { connection in
            try connection.query(Self.purgeHistory, [days, limit]).affectedRows
        }
    }

    private static func seconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return String(Double(seconds) + Double(attoseconds) / 1e18)
    }

    /// Oldest due first; SKIP LOCKED lets several instances claim side by side. A due event of a
    /// removed endpoint is dead-lettered as removal does: an event enqueued while the removal
    /// committed escapes it, and left pending it stayed first in line for ever (never claimed,
    /// never moved on), so enough of them stopped every delivery.
    static let claim = PreparedStatement(
        "webhook_claim",
        """
        WITH due AS (
            SELECT o.id, e.removed_at IS NULL AS active
            FROM webhook_outbox o JOIN webhook_endpoints e ON e.id = o.endpoint_id
            WHERE o.status = 'pending' AND o.next_attempt_at <= now() AND o.endpoint_id <> ALL ($3::bigint[])
            ORDER BY o.next_attempt_at, o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED),
        dropped AS (
            UPDATE webhook_outbox o SET status = 'dead', last_error = 'endpoint removed'
            FROM due WHERE o.id = due.id AND NOT due.active
            RETURNING o.id),
        claimed AS (
            UPDATE webhook_outbox o SET attempts = o.attempts + 1, next_attempt_at = now() + make_interval(secs => $2::float8)
            FROM due, webhook_endpoints e
            WHERE o.id = due.id AND due.active AND e.id = o.endpoint_id
            RETURNING o.id, o.event_id::text, o.type, o.payload::text, o.created_at, o.attempts, e.id AS endpoint_id,
                      e.url, e.secret)
        SELECT * FROM claimed
        UNION ALL
        SELECT d.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM dropped d
        """)

    static let purgeHistory = PreparedStatement(
        "webhook_purge_history",
        """
        DELETE FROM webhook_outbox WHERE id IN (
            SELECT id FROM webhook_outbox
            WHERE status <> 'pending' AND created_at < now() - make_interval(days => $1::int)
            ORDER BY created_at LIMIT $2)
        """)

    static let delivered = PreparedStatement(
        "webhook_delivered",
        """
        UPDATE webhook_outbox SET status = 'delivered', delivered_at = now(), last_status = $3, last_error = NULL
        WHERE id = $1 AND attempts = $2
          AND (status = 'pending' OR (status = 'dead' AND last_error = 'endpoint removed'))
        """)

    static let givenBack = PreparedStatement(
        "webhook_given_back",
        """
        UPDATE webhook_outbox SET next_attempt_at = now()
        WHERE id = $1 AND attempts = $2 AND status = 'pending'
        """)

    static let failed = PreparedStatement(
        "webhook_failed",
        """
        UPDATE webhook_outbox SET status = CASE WHEN $5::float8 IS NULL THEN 'dead' ELSE 'pending' END,
               next_attempt_at = CASE WHEN $5::float8 IS NULL THEN next_attempt_at ELSE now() + make_interval(secs => $5::float8) END,
               last_status = $3, last_error = $4
        WHERE id = $1 AND attempts = $2 AND status = 'pending'
        """)
}

/// Writes events into the outbox on the caller's connection, inside the caller's transaction:
/// an event exists exactly when the change that caused it commits. (balance.low and
/// balance.exhausted are written by the fold that moves the balance, `tally_fold`.)
public enum WebhookOutbox {
    /// Enqueues one event for every endpoint that wants `type`; `data` is a JSON object.
    /// Returns the event id, or nil when no endpoint wants it (nothing is written).
    @discardableResult
    public static func enqueue(_ type: WebhookEventType, data: String, on connection: PostgresConnection) throws
        -> String?
    {
        try connection.query(insertEvent, [type.rawValue, data]).first?.decode(0, as: String.self)
    }

    /// `export.ready`, for the export code to call in the transaction that records the export.
    @discardableResult
    public static func enqueueExportReady(_ export: ExportReadyEvent, on connection: PostgresConnection) throws
        -> String?
    {
        try enqueue(.exportReady, data: export.json, on: connection)
    }

    static func enqueueUserSuspended(_ user: User, by actor: Actor, on connection: PostgresConnection) throws {
        try enqueue(
            .userSuspended,
            data:
                #"{"user_id":\#(user.id),"username":\#(JSONText.quote(user.username)),"group":\#(JSONText.quote(user.group)),"quota":\#(user.quota),"by":\#(JSONText.quote(actor.name)),"tid":\#(actor.tid.map(JSONText.quote) ?? "null")}"#,
            on: connection)
    }

    static let insertEvent = PreparedStatement(
        "webhook_enqueue",
        """
        WITH event AS MATERIALIZED (SELECT gen_random_uuid() AS id)
        INSERT INTO webhook_outbox (event_id, endpoint_id, type, payload)
        SELECT event.id, e.id, $1, $2::jsonb FROM event, webhook_endpoints e
        WHERE e.removed_at IS NULL AND (cardinality(e.events) = 0 OR $1 = ANY (e.events))
        ORDER BY e.id
        RETURNING event_id::text
        """)
}

/// What an `export.ready` event says about a finished export.
public struct ExportReadyEvent: Sendable, Equatable {
    /// The export's id, as the export API names it.
    public var exportID: String
    /// e.g. `usage`, `raw`, `statement`.
    public var kind: String
    /// `YYYY-MM`.
    public var month: String
    /// Where to fetch it (an API path or URL), if anywhere.
    public var location: String?
    /// Rows written, when known.
    public var rows: Int64?

    public init(exportID: String, kind: String, month: String, location: String? = nil, rows: Int64? = nil) {
        self.exportID = exportID
        self.kind = kind
        self.month = month
        self.location = location
        self.rows = rows
    }

    var json: String {
        #"{"export_id":\#(JSONText.quote(exportID)),"kind":\#(JSONText.quote(kind)),"month":\#(JSONText.quote(month)),"location":\#(location.map(JSONText.quote) ?? "null"),"rows":\#(rows.map(String.init) ?? "null")}"#
    }
}
