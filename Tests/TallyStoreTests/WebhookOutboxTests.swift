import Foundation
import Synchronization
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// Events are written to the outbox in the transaction of the change that causes them.
@Suite("webhook outbox")
struct WebhookOutboxTests {
    /// A database with synthetic users 1…n of `quota` units each and one endpoint per entry of
    /// `endpoints` (its event filter).
    static func setUp(_ name: String, users: Int = 1, quota: Int64, endpoints: [[WebhookEventType]] = [[]]) async throws
        -> (TestDatabase, WebhookRepository)
    {
        let db = try await TestDatabase.create(name)
        try await db.prepareBilling(users: users, quota: quota)
        let webhooks = WebhookRepository(pool: db.pool)
        for events in endpoints {
            _ = try await webhooks.add(url: "http://127.0.0.1:9/hook", secret: nil, events: events, by: .cli)
        }
        return (db, webhooks)
    }

    /// Ingests one line charging `quota` to synthetic user `user`.
    static func charge(_ db: TestDatabase, user: Int = 1, quota: Int64, id: String = UUID().uuidString) async throws {
        let (userID, tokenID) = try await db.pool.withConnection { connection in
            let row = try connection.query(
                """
                SELECT u.id, t.id FROM users u JOIN tokens t ON t.user_id = u.id WHERE u.username = $1
                """, ["synthetic-\(user)"])[0]
            return (try row.decode(0, as: Int64.self), try row.decode(1, as: Int64.self))
        }
        let line = PricedLine(
            requestID: id, createdAt: Date(), userID: userID, tokenID: tokenID, channelID: nil, model: "gpt-4o",
            group: "default", kind: .chat, status: 200, isStream: false, durationMs: 10, ip: nil, tid: nil,
            error: nil, usage: Usage(promptTokens: 1000, completionTokens: 500), quota: quota, priceVersionID: 1)
        _ = try await PostgresIngestRepository(pool: db.pool).store(
            [line], rejects: [], totalLines: 1, tid: TraceID.generate(), source: "test")
        try await db.fold()  // balance events are written by the fold that moves the balance
    }

    static func events(_ db: TestDatabase) async throws -> [(type: String, payload: [String: Any])] {
        let rows = try await db.pool.withConnection { connection in
            try connection.query("SELECT type, payload::text FROM webhook_outbox ORDER BY id").map {
                (try $0.decode(0, as: String.self), try $0.decode(1, as: String.self))
            }
        }
        return try rows.map { ($0.0, try JSONSerialization.jsonObject(with: Data($0.1.utf8)) as? [String: Any] ?? [:]) }
    }

    @Test("crossing the low-balance threshold enqueues exactly one balance.low; later debits above 0 enqueue nothing")
    func lowBalanceOnce() async throws {
        let (db, _) = try await Self.setUp("whlow", quota: 600_000)
        try await Self.charge(db, quota: 50_000)  // 550,000: still above the default 500,000
        #expect(try await Self.events(db).isEmpty)
        try await Self.charge(db, quota: 60_000)  // 490,000: crossed
        try await Self.charge(db, quota: 60_000)  // 430,000: already below, no new event
        let events = try await Self.events(db)
        #expect(events.count == 1)
        #expect(events.first?.type == "balance.low")
        let payload = try #require(events.first?.payload)
        #expect(payload["quota"] as? Int == 490_000)
        #expect(payload["previous_quota"] as? Int == 550_000)
        #expect(payload["threshold"] as? Int == 500_000)
        #expect(payload["username"] as? String == "synthetic-1")
    }

    @Test("reaching 0 enqueues balance.exhausted once; one debit crossing both thresholds enqueues both")
    func exhausted() async throws {
        let (db, _) = try await Self.setUp("whexhausted", users: 2, quota: 600_000)
        try await Self.charge(db, user: 1, quota: 200_000)  // low
        try await Self.charge(db, user: 1, quota: 400_000)  // exactly 0: exhausted
        try await Self.charge(db, user: 1, quota: 1)  // -1: nothing new
        try await Self.charge(db, user: 2, quota: 700_000)  // both in one step
        let events = try await Self.events(db)
        #expect(events.map(\.type) == ["balance.low", "balance.exhausted", "balance.low", "balance.exhausted"])
        #expect(events[1].payload["quota"] as? Int == 0)
        #expect(events[3].payload["quota"] as? Int == -100_000)
    }

    @Test("a user's own threshold wins over the global one; 0 turns balance.low off; thresholds are audited")
    func thresholds() async throws {
        let (db, webhooks) = try await Self.setUp("whthreshold", users: 2, quota: 600_000)
        let userID = try await db.scalar("SELECT id FROM users WHERE username = 'synthetic-1'")
        try await webhooks.setLowBalanceThreshold(units: 100_000, user: userID, by: .cli)
        try await webhooks.setLowBalanceThreshold(units: 0, user: nil, by: .cli)
        try await Self.charge(db, user: 1, quota: 200_000)  // 400,000: above its own 100,000
        try await Self.charge(db, user: 2, quota: 200_000)  // global threshold is off
        #expect(try await Self.events(db).isEmpty)
        try await Self.charge(db, user: 1, quota: 350_000)  // 50,000
        let events = try await Self.events(db)
        #expect(events.map(\.type) == ["balance.low"])
        #expect(events.first?.payload["threshold"] as? Int == 100_000)
        try await webhooks.setLowBalanceThreshold(units: nil, user: userID, by: .cli)
        #expect(try await db.scalar("SELECT count(*) FROM users WHERE low_balance_threshold IS NOT NULL") == 0)
        #expect(
            try await db.scalar("SELECT count(*) FROM audit_log WHERE action = 'webhook.low_balance_threshold'") == 3)
        await #expect(throws: StoreError.self) {
            try await webhooks.setLowBalanceThreshold(units: nil, user: nil, by: .cli)
        }
        await #expect(throws: StoreError.self) {
            try await webhooks.setLowBalanceThreshold(units: 1, user: 999_999, by: .cli)
        }
    }

    @Test("one event id per event across endpoints; an endpoint gets only the types it asked for")
    func fanOut() async throws {
        let (db, _) = try await Self.setUp(
            "whfanout", quota: 600_000,
            endpoints: [[], [.balanceExhausted], [.balanceLow, .userSuspended]])
        try await Self.charge(db, quota: 200_000)
        let rows = try await db.pool.withConnection { connection in
            try connection.query("SELECT event_id::text, endpoint_id, type FROM webhook_outbox ORDER BY endpoint_id")
                .map {
                    (
                        try $0.decode(0, as: String.self), try $0.decode(1, as: Int64.self),
                        try $0.decode(2, as: String.self)
                    )
                }
        }
        #expect(rows.map(\.1) == [1, 3])
        #expect(Set(rows.map(\.0)).count == 1)
        #expect(rows.allSatisfy { $0.2 == "balance.low" })
    }

    @Test("without an endpoint nothing is enqueued")
    func noEndpoint() async throws {
        let (db, _) = try await Self.setUp("whnone", quota: 600_000, endpoints: [])
        try await Self.charge(db, quota: 700_000)
        #expect(try await db.scalar("SELECT count(*) FROM webhook_outbox") == 0)
        #expect(try await db.scalar("SELECT quota FROM users WHERE username = 'synthetic-1'") == -100_000)
    }

    @Test("suspending enqueues one user.suspended; suspending again or enabling enqueues nothing")
    func suspend() async throws {
        let (db, _) = try await Self.setUp("whsuspend", quota: 600_000)
        let accounts = AccountRepository(pool: db.pool)
        let userID = try await db.scalar("SELECT id FROM users WHERE username = 'synthetic-1'")
        let admin = Actor(userID: nil, name: "ops", tid: "4bf92f3577b34da6a3ce929d0e0e4736")
        _ = try await accounts.manage(id: userID, .disable, actorRole: nil, by: admin)
        _ = try await accounts.manage(id: userID, .disable, actorRole: nil, by: admin)
        _ = try await accounts.manage(id: userID, .enable, actorRole: nil, by: admin)
        let events = try await Self.events(db)
        #expect(events.map(\.type) == ["user.suspended"])
        #expect(events.first?.payload["user_id"] as? Int == Int(userID))
        #expect(events.first?.payload["by"] as? String == "ops")
        #expect(events.first?.payload["tid"] as? String == admin.tid)
    }

    @Test(
        "a rolled-back change enqueues nothing: a fold failing after its debit and its enqueue, a failing caller transaction"
    )
    func rollback() async throws {
        let (db, _) = try await Self.setUp("whrollback", quota: 600_000)
        // Make the fold fail at its last step, after the debit and the enqueue.
        try await db.pool.withConnection { connection in
            try connection.execute(
                """
                CREATE FUNCTION fail_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$;
                CREATE TRIGGER fail_enqueue AFTER INSERT ON webhook_outbox FOR EACH ROW EXECUTE FUNCTION fail_enqueue();
                """)
        }
        await #expect(throws: PostgresError.self) { try await Self.charge(db, quota: 700_000) }
        #expect(try await db.scalar("SELECT count(*) FROM webhook_outbox") == 0)
        #expect(try await db.scalar("SELECT quota FROM users WHERE username = 'synthetic-1'") == 600_000)
        #expect(try await db.scalar("SELECT count(*) FROM pending_charges") == 1, "the charge waits for the next fold")
        try await db.pool.withConnection { try $0.execute("DROP TRIGGER fail_enqueue ON webhook_outbox") }

        struct Abort: Error {}
        final class Captured: Sendable { let id = Mutex<String?>(nil) }
        let enqueued = Captured()
        await #expect(throws: Abort.self) {
            try await db.pool.transaction { connection in
                let id = try WebhookOutbox.enqueueExportReady(
                    ExportReadyEvent(exportID: "e1", kind: "usage", month: "2026-10"), on: connection)
                enqueued.id.withLock { $0 = id }
                throw Abort()
            }
        }
        #expect(enqueued.id.withLock { $0 } != nil)
        #expect(try await db.scalar("SELECT count(*) FROM webhook_outbox") == 0)
    }

    @Test("export.ready carries its fields")
    func exportReady() async throws {
        let (db, _) = try await Self.setUp("whexport", quota: 1)
        let id = try await db.pool.transaction { connection in
            try WebhookOutbox.enqueueExportReady(
                ExportReadyEvent(
                    exportID: "exp-7", kind: "usage", month: "2026-10", location: "/api/admin/exports/exp-7", rows: 42),
                on: connection)
        }
        let events = try await Self.events(db)
        #expect(events.map(\.type) == ["export.ready"])
        #expect(events.first?.payload["export_id"] as? String == "exp-7")
        #expect(events.first?.payload["rows"] as? Int == 42)
        #expect(
            try await db.scalar("SELECT count(*) FROM webhook_outbox WHERE event_id = $1::uuid", [try #require(id)])
                == 1)
    }

    /// Found by a review: an event enqueued while its endpoint's removal committed stayed pending,
    /// first in line and never claimed, and eight of them stopped every delivery.
    @Test("events of a removed endpoint that escaped its removal are dead-lettered at the claim, not left blocking it")
    func removedEndpointsEvents() async throws {
        let (db, webhooks) = try await Self.setUp("whorphans", quota: 1, endpoints: [[], []])
        let endpoints = try await webhooks.list().map(\.id).sorted()
        try await webhooks.remove(id: endpoints[0], by: .cli)
        // What the race leaves: ten older events of the removed endpoint, pending; one of the other.
        try await db.pool.withConnection { connection in
            try connection.query(
                """
                INSERT INTO webhook_outbox (event_id, endpoint_id, type, payload, next_attempt_at)
                SELECT gen_random_uuid(), $1, 'balance.low', '{}', now() - interval '1 minute' FROM generate_series(1, 10)
                """, [endpoints[0]])
            try connection.query(
                "INSERT INTO webhook_outbox (event_id, endpoint_id, type, payload) VALUES (gen_random_uuid(), $1, 'balance.low', '{}')",
                [endpoints[1]])
        }
        // The first claim dead-letters eight and says so: the dispatcher claims again at once,
        // where an empty answer would have it wait for its poll interval.
        let first = try await webhooks.claimDue(limit: 8, lease: .seconds(30))
        #expect(first.deliveries.isEmpty && first.deadLettered == 8)
        var claimed: [WebhookDelivery] = []
        for _ in 0..<3 where claimed.isEmpty {
            claimed = try await webhooks.claimDue(limit: 8, lease: .seconds(30)).deliveries
        }
        #expect(claimed.map(\.endpointID) == [endpoints[1]])
        #expect(
            try await db.scalar(
                "SELECT count(*) FROM webhook_outbox WHERE endpoint_id = $1 AND status = 'dead' AND last_error = 'endpoint removed'",
                [endpoints[0]]) == 10)
    }

    /// Found by a review: the removal dead-lettered the delivery already on its way too, and its
    /// success then matched nothing: the receiver had the event, the table said dead.
    @Test("a delivery in flight when its endpoint is removed is recorded delivered once it succeeds")
    func removedWhileDelivering() async throws {
        let (db, webhooks) = try await Self.setUp("whinflight", quota: 1, endpoints: [[]])
        let endpoint = try #require(try await webhooks.list().first?.id)
        _ = try await db.pool.withConnection { connection in
            try connection.query(
                "INSERT INTO webhook_outbox (event_id, endpoint_id, type, payload) VALUES (gen_random_uuid(), $1, 'balance.low', '{}')",
                [endpoint])
        }
        let delivery = try #require(try await webhooks.claimDue(limit: 1, lease: .seconds(30)).deliveries.first)
        try await webhooks.remove(id: endpoint, by: .cli)
        #expect(try await webhooks.markDelivered(delivery, status: 200))
        #expect(try await db.scalar("SELECT count(*) FROM webhook_outbox WHERE status = 'delivered'") == 1)
    }

    @Test("the history purge deletes delivered and dead events past the window, oldest first, never pending ones")
    func historyPurge() async throws {
        let (db, webhooks) = try await Self.setUp("whhistory", quota: 1)
        let endpoint = try #require(try await webhooks.list().first).id
        // (status, age in days): two past the 30-day window, one pending older still, one inside it.
        for (status, days) in [("delivered", 31), ("dead", 32), ("pending", 40), ("delivered", 29)] {
            _ = try await db.pool.withConnection { connection in
                try connection.query(
                    """
                    INSERT INTO webhook_outbox (event_id, endpoint_id, type, payload, status, created_at)
                    VALUES (gen_random_uuid(), $1, 'balance.low', '{}', $2, now() - make_interval(days => $3::int))
                    """, [endpoint, status, days])
            }
        }
        let kept = { @Sendable () async throws -> [String] in
            try await db.pool.withConnection { connection in
                try connection.query("SELECT status FROM webhook_outbox ORDER BY created_at").map {
                    try $0.decode(0, as: String.self)
                }
            }
        }
        #expect(try await webhooks.purgeHistory(olderThanDays: 30, limit: 1) == 1)
        #expect(try await kept() == ["pending", "delivered", "delivered"])  // the dead one, the oldest, went first
        #expect(try await webhooks.purgeHistory(olderThanDays: 30, limit: 10) == 1)
        #expect(try await webhooks.purgeHistory(olderThanDays: 30, limit: 10) == 0)
        #expect(try await kept() == ["pending", "delivered"])
        #expect(try await webhooks.purgeHistory(olderThanDays: 1, limit: 10) == 1)
        #expect(try await kept() == ["pending"])
    }

    @Test("endpoints: validation, list without secrets, removal erases the secret and drops pending events")
    func endpoints() async throws {
        let (db, webhooks) = try await Self.setUp("whendpoints", quota: 1, endpoints: [])
        // The URL rules themselves are RuleTests'; here: the repository applies them.
        await #expect(throws: RuleViolation.self) {
            _ = try await webhooks.add(url: "ftp://x/y", secret: nil, events: [], by: .cli)
        }
        await #expect(throws: StoreError.self) {
            _ = try await webhooks.add(
                url: "https://example.com/h", secret: WebhookSecret("short"), events: [], by: .cli)
        }

        let (endpoint, secret) = try await webhooks.add(
            url: "https://example.com/h?token=abc", secret: nil,
            events: [.userSuspended], description: "ops", by: .cli)
        #expect(secret.value.hasPrefix("whsec_"))
        #expect("\(secret)" == "(secret)")
        #expect(endpoint.events == [.userSuspended])
        let userID = try await db.scalar("SELECT id FROM users WHERE username = 'synthetic-1'")
        _ = try await AccountRepository(pool: db.pool).manage(id: userID, .disable, actorRole: nil, by: .cli)
        #expect(try await webhooks.list().first?.pending == 1)
        try await webhooks.remove(id: endpoint.id, by: .cli)
        #expect(try await webhooks.list().isEmpty)
        #expect(try await db.scalar("SELECT count(*) FROM webhook_endpoints WHERE secret IS NOT NULL") == 0)
        #expect(
            try await db.scalar(
                "SELECT count(*) FROM webhook_outbox WHERE status = 'dead' AND last_error = 'endpoint removed'") == 1)
        await #expect(throws: StoreError.self) { try await webhooks.remove(id: endpoint.id, by: .cli) }
        // The audit log keeps the origin only, never the secret or the URL's query.
        let audit = try await db.pool.withConnection { connection in
            try connection.query(
                "SELECT action, coalesce(before::text, '') || coalesce(after::text, '') FROM audit_log WHERE action LIKE 'webhook.%' ORDER BY id"
            )
            .map { "\(try $0.decode(0, as: String.self)) \(try $0.decode(1, as: String.self))" }
        }
        #expect(audit.count == 2)
        #expect(audit.allSatisfy { !$0.contains("token=abc") && !$0.contains(secret.value) })
    }
}
