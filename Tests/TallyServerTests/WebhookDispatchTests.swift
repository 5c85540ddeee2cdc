import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import TallyCore
import TallyPostgres
import TallyServer
import TallyStore
import TallyTestSupport
import Testing

/// The dispatcher against a local receiver and a real database.
@Suite("webhook delivery")
struct WebhookDispatchTests {
    static let secret = "test-secret-0123456789abcdef"

    /// A database with one user and one endpoint at `port` (signed with `secret`).
    static func setUp(_ name: String, port: Int) async throws -> (TestDatabase, WebhookRepository, userID: Int64) {
        let db = try await TestDatabase.create(name)
        try await db.prepareBilling(users: 1, quota: 600_000)
        let webhooks = WebhookRepository(pool: db.pool)
        _ = try await webhooks.add(
            url: "http://127.0.0.1:\(port)/hook", secret: WebhookSecret(secret), events: [], by: .cli)
        return (db, webhooks, try await db.scalar("SELECT id FROM users WHERE username = 'synthetic-1'"))
    }

    /// Backoff after attempt n: [d/2, d] with d = `backoff` · 2^(n−1), at most 2 · `backoff`.
    static func dispatcher(
        _ db: TestDatabase, maxAttempts: Int = 5, batchSize: Int = 8,
        backoff: Duration = .milliseconds(100), timeout: Duration = .seconds(15)
    ) -> WebhookDispatcher {
        // Before any delivery counts: counters made before the metrics system is bootstrapped
        // stay no-ops, so which test ran first would decide what deadLetter sees.
        TallyMetrics.bootstrap()
        var logger = Logger(label: "test.webhooks")
        logger.logLevel = .critical
        return WebhookDispatcher(
            repository: WebhookRepository(pool: db.pool),
            configuration: WebhookDispatchConfiguration(
                pollInterval: .milliseconds(50), batchSize: batchSize, maxAttempts: maxAttempts,
                baseBackoff: backoff, maxBackoff: backoff * 2,
                timeout: timeout),  // generous: a timed-out delivery is (rightly) sent again
            logger: logger)
    }

    static func drain(_ dispatcher: WebhookDispatcher) async throws {
        while try await dispatcher.runOnce() > 0 {}
    }

    /// Makes every pending delivery due now, as if its backoff (or claim lease) had run out:
    /// the tests check the schedule the dispatcher wrote, then move time on instead of sleeping.
    static func makeDue(_ db: TestDatabase) async throws {
        try await setNextAttempt(db, "now()")
    }

    /// Sets every outbox row's `next_attempt_at` to the SQL expression `when`.
    static func setNextAttempt(_ db: TestDatabase, _ when: String) async throws {
        _ = try await db.pool.withConnection { try $0.query("UPDATE webhook_outbox SET next_attempt_at = \(when)") }
    }

    /// The database clock, in milliseconds since the epoch.
    static func databaseMillis(_ db: TestDatabase) async throws -> Int64 {
        try await db.scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
    }

    static func suspend(_ db: TestDatabase, _ userID: Int64) async throws {
        _ = try await AccountRepository(pool: db.pool).manage(id: userID, .disable, actorRole: nil, by: .cli)
    }

    static func outbox(_ db: TestDatabase) async throws -> [(
        status: String, attempts: Int, lastStatus: Int?, lastError: String?
    )] {
        try await db.pool.withConnection { connection in
            try connection.query("SELECT status, attempts, last_status, last_error FROM webhook_outbox ORDER BY id").map
            {
                (try $0.decode(0), try $0.decode(1), try $0.decodeOptional(2), try $0.decodeOptional(3))
            }
        }
    }

    @Test("a delivery is signed, carries the event headers and is marked delivered on 2xx")
    func signedDelivery() async throws {
        let receiver = WebhookReceiver()
        try await receiver.run { port in
            let (db, _, userID) = try await Self.setUp("whdeliver", port: port)
            try await Self.suspend(db, userID)
            #expect(try await Self.dispatcher(db).runOnce() == 1)
            let received = try #require(receiver.received.first)
            #expect(receiver.received.count == 1)
            #expect(received.signatureVerifies(secret: Self.secret))
            #expect(!received.signatureVerifies(secret: Self.secret + "x"))
            #expect(received.headers["x-tally-event"] == "user.suspended")
            #expect(received.headers["content-type"] == "application/json")
            #expect(received.headers["x-tally-delivery-attempt"] == "1")
            let timestamp = try #require(received.headers["x-tally-timestamp"].flatMap { Double($0) })
            #expect(abs(timestamp - Date().timeIntervalSince1970) < 60)
            #expect(received.json["id"] as? String == received.eventID)
            #expect(received.json["type"] as? String == "user.suspended")
            #expect((received.json["data"] as? [String: Any])?["user_id"] as? Int == Int(userID))
            #expect(!String(decoding: received.body, as: UTF8.self).contains(Self.secret))
            let rows = try await Self.outbox(db)
            #expect(rows.map(\.status) == ["delivered"])
            #expect(rows.first?.lastStatus == 204)
            #expect(try await Self.dispatcher(db).runOnce() == 0)
        }
    }

    /// Found by a review: a 2xx whose page ran past the 64 KiB read was counted a failure, so the
    /// event was sent again on every attempt and finally dead-lettered.
    @Test("a 2xx with a long page is delivered at the first attempt")
    func longAnswerDelivered() async throws {
        let receiver = WebhookReceiver()
        try await receiver.run { port in
            let (db, webhooks, userID) = try await Self.setUp("whlong", port: port)
            try await db.pool.withConnection { try $0.execute("DELETE FROM webhook_endpoints") }
            _ = try await webhooks.add(
                url: "http://127.0.0.1:\(port)/hook-long", secret: WebhookSecret(Self.secret), events: [], by: .cli)
            try await Self.suspend(db, userID)
            #expect(try await Self.dispatcher(db).runOnce() == 1)
            #expect(receiver.received.count == 1)
            let rows = try await Self.outbox(db)
            #expect(rows.map(\.status) == ["delivered"])
            #expect(rows.first?.lastStatus == 200)
        }
    }

    @Test("a failed delivery is retried after its backoff and delivered with the same event id")
    func retry() async throws {
        let receiver = WebhookReceiver()
        receiver.failNext(1)
        try await receiver.run { port in
            let (db, _, userID) = try await Self.setUp("whretry", port: port)
            try await Self.suspend(db, userID)
            // First retry after 30–60 s: far enough that a loaded machine cannot make it due early.
            let dispatcher = Self.dispatcher(db, backoff: .seconds(60))
            let before = try await Self.databaseMillis(db)
            #expect(try await dispatcher.runOnce() == 1)
            let after = try await Self.databaseMillis(db)
            var rows = try await Self.outbox(db)
            #expect(rows.first?.status == "pending")
            #expect(rows.first?.lastStatus == 503)
            #expect(rows.first?.lastError == "HTTP 503")
            // Scheduled in [d/2, d] after the attempt, which happened between `before` and `after`
            // (1 ms of slack for the rounding to milliseconds).
            let due = try await db.scalar(
                """
                SELECT (extract(epoch FROM next_attempt_at) * 1000)::bigint FROM webhook_outbox
                """)
            #expect(due - before >= 29_999 && due - after <= 60_001, "due \(due - before) ms after the attempt began")
            #expect(try await dispatcher.runOnce() == 0)  // not due yet: backing off
            try await Self.makeDue(db)
            #expect(try await dispatcher.runOnce() == 1)
            let received = receiver.received
            #expect(received.count == 2)
            #expect(received[0].eventID != nil && received[0].eventID == received[1].eventID)
            #expect(received.map { $0.headers["x-tally-delivery-attempt"] } == ["1", "2"])
            #expect(received.allSatisfy { $0.signatureVerifies(secret: Self.secret) })
            rows = try await Self.outbox(db)
            #expect(rows.map(\.status) == ["delivered"])
            #expect(rows.first?.attempts == 2)
        }
    }

    @Test("after the last attempt an event is dead-lettered and counted")
    func deadLetter() async throws {
        let receiver = WebhookReceiver()
        receiver.failNext(100)
        try await receiver.run { port in
            let (db, _, userID) = try await Self.setUp("whdead", port: port)
            try await Self.suspend(db, userID)
            let dispatcher = Self.dispatcher(db, maxAttempts: 2)
            #expect(try await dispatcher.runOnce() == 1)
            try await Self.makeDue(db)
            #expect(try await dispatcher.runOnce() == 1)
            // Dead after the second attempt: never due again, whatever the time.
            try await Self.setNextAttempt(db, "now() - interval '1 day'")
            #expect(try await dispatcher.runOnce() == 0)
            #expect(receiver.received.count == 2)
            #expect(try await Self.outbox(db).map(\.status) == ["dead"])
            let metrics = String(decoding: TallyMetrics.registry.emitToBuffer(), as: UTF8.self)
            #expect(metrics.contains(#"tally_webhook_deliveries_total{result="dead"}"#))
            #expect(metrics.contains(#"tally_webhook_deliveries_total{result="failed"}"#))
        }
    }

    @Test("the running dispatcher purges the history past its window as it starts, and keeps the rest")
    func purgesHistory() async throws {
        let (db, webhooks, _) = try await Self.setUp("whpurge", port: 9)
        let endpoint = try #require(try await webhooks.list().first).id
        _ = try await db.pool.withConnection { connection in
            try connection.query(
                """
                INSERT INTO webhook_outbox (event_id, endpoint_id, type, payload, status, created_at)
                SELECT gen_random_uuid(), $1, 'balance.low', '{}', 'delivered', now() - make_interval(days => d)
                FROM unnest(ARRAY[31, 29]) AS d
                """, [endpoint])
        }
        let running = Task { try await Self.dispatcher(db).run() }
        defer { running.cancel() }
        var left: Int64 = 2
        for _ in 0..<100 where left == 2 {
            try await Task.sleep(for: .milliseconds(50))
            left = try await db.scalar("SELECT count(*) FROM webhook_outbox")
        }
        #expect(left == 1)
        #expect(
            try await db.scalar("SELECT count(*) FROM webhook_outbox WHERE created_at > now() - interval '30 days'")
                == 1)
    }

    /// Found by a review: deliveries went out in rounds, each waiting for its slowest, so one
    /// receiver hanging until the timeout held up every other endpoint's events.
    @Test("a receiver that hangs holds half the slots at most: another endpoint's events go out meanwhile")
    func hangingReceiverHoldsItsShare() async throws {
        let receiver = WebhookReceiver()
        try await receiver.run { port in
            let (db, webhooks, _) = try await Self.setUp("whshare", port: port)
            let answering = try #require(try await webhooks.list().first).id
            let hanging = try await webhooks.add(
                url: "http://127.0.0.1:\(port)/hook-hang", secret: WebhookSecret(Self.secret), events: [], by: .cli
            ).endpoint.id
            // The hanging endpoint's six events are due first, then the answering one's three.
            _ = try await db.pool.withConnection { connection in
                try connection.query(
                    """
                    INSERT INTO webhook_outbox (event_id, endpoint_id, type, payload, next_attempt_at)
                    SELECT gen_random_uuid(), e, 'export.ready', '{}', now() - make_interval(secs => 60 - n)
                    FROM unnest(ARRAY[$1, $1, $1, $1, $1, $1, $2, $2, $2]::bigint[]) WITH ORDINALITY AS r (e, n)
                    """, [hanging, answering])
            }
            let running = Task { try await Self.dispatcher(db, batchSize: 4, timeout: .seconds(30)).run() }
            defer { running.cancel() }
            var delivered: Int64 = 0
            let deadline = ContinuousClock.now + .seconds(10)
            while delivered < 3, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
                delivered = try await db.scalar(
                    "SELECT count(*) FROM webhook_outbox WHERE endpoint_id = $1 AND status = 'delivered'", [answering])
            }
            #expect(delivered == 3)
            #expect(receiver.received.count - 3 <= 2)  // the hanging endpoint's share of the 4 slots
        }
    }

    /// Found by a review of the shutdown: a delivery the shutdown's deadline cut short was
    /// recorded as the receiver's failure, and on its last attempt dead-lettered untried.
    @Test(
        "a delivery cut short by cancelling the dispatcher is no failure: due again at once, even after the last attempt"
    )
    func cancelledDeliveryGivenBack() async throws {
        let receiver = WebhookReceiver()
        try await receiver.run { port in
            let (db, webhooks, _) = try await Self.setUp("whcut", port: port)
            let hanging = try await webhooks.add(
                url: "http://127.0.0.1:\(port)/hook-hang", secret: WebhookSecret(Self.secret), events: [], by: .cli
            ).endpoint.id
            _ = try await db.pool.withConnection { connection in
                try connection.query(
                    "INSERT INTO webhook_outbox (event_id, endpoint_id, type, payload) VALUES (gen_random_uuid(), $1, 'export.ready', '{}')",
                    [hanging])
            }
            let running = Task { try await Self.dispatcher(db, maxAttempts: 1, timeout: .seconds(30)).run() }
            #expect(try await waitUntil(timeout: .seconds(10)) { receiver.received.count == 1 })
            running.cancel()
            try await running.value
            let rows = try await Self.outbox(db)
            #expect(rows.map(\.status) == ["pending"])
            #expect(rows.map(\.attempts) == [1])
            #expect(rows.map(\.lastError) == [nil])
            #expect(try await db.scalar("SELECT count(*) FROM webhook_outbox WHERE next_attempt_at <= now()") == 1)
        }
    }

    @Test("an unreachable endpoint records the transport error, never the secret")
    func unreachable() async throws {
        let db = try await TestDatabase.create("whunreachable")
        try await db.prepareBilling(users: 1, quota: 600_000)
        _ = try await WebhookRepository(pool: db.pool).add(
            url: "http://127.0.0.1:1/hook?key=abc", secret: WebhookSecret(Self.secret),
            events: [], by: .cli)
        try await Self.suspend(db, try await db.scalar("SELECT id FROM users WHERE username = 'synthetic-1'"))
        #expect(try await Self.dispatcher(db).runOnce() == 1)
        let row = try #require(try await Self.outbox(db).first)
        #expect(row.status == "pending")
        #expect(row.lastStatus == nil)
        #expect(row.lastError?.hasPrefix("POST http://127.0.0.1:1: ") == true)
        #expect(row.lastError?.contains("key=abc") == false)
        #expect(row.lastError?.contains(Self.secret) == false)
    }

    @Test("two dispatchers draining one outbox deliver every event exactly once (SKIP LOCKED claims)")
    func concurrentDispatchers() async throws {
        let receiver = WebhookReceiver()
        try await receiver.run { port in
            let (db, _, _) = try await Self.setUp("whconcurrent", port: port)
            try await db.pool.transaction { connection in
                for index in 0..<40 {
                    try WebhookOutbox.enqueueExportReady(
                        ExportReadyEvent(exportID: "e\(index)", kind: "usage", month: "2026-10"),
                        on: connection)
                }
            }
            let first = Self.dispatcher(db, batchSize: 3)
            let second = Self.dispatcher(db, batchSize: 3)
            async let a: Void = Self.drain(first)
            async let b: Void = Self.drain(second)
            _ = try await (a, b)
            let ids = receiver.received.compactMap(\.eventID)
            #expect(ids.count == 40)
            #expect(Set(ids).count == 40)
            #expect(
                try await db.scalar("SELECT count(*) FROM webhook_outbox WHERE status = 'delivered' AND attempts = 1")
                    == 40)
        }
    }

    @Test("a claim whose lease ends (a crashed dispatcher) is claimed again, as the next attempt of the same event")
    func leaseExpiry() async throws {
        let db = try await TestDatabase.create("whlease")
        try await db.prepareBilling(users: 1, quota: 600_000)
        let webhooks = WebhookRepository(pool: db.pool)
        _ = try await webhooks.add(
            url: "http://127.0.0.1:1/hook", secret: WebhookSecret(Self.secret), events: [], by: .cli)
        try await Self.suspend(db, try await db.scalar("SELECT id FROM users WHERE username = 'synthetic-1'"))
        let first = try #require(try await webhooks.claimDue(limit: 10, lease: .seconds(60)).deliveries.first)
        #expect(try await webhooks.claimDue(limit: 10, lease: .seconds(60)).deliveries.isEmpty)
        // The claiming dispatcher crashed; its lease runs out.
        let leaseEnd = try await db.scalar(
            """
            SELECT extract(epoch FROM next_attempt_at - now())::bigint FROM webhook_outbox
            """)
        #expect(leaseEnd > 30, "the claim leased the row for \(leaseEnd) s")
        try await Self.makeDue(db)
        let again = try #require(try await webhooks.claimDue(limit: 10, lease: .seconds(60)).deliveries.first)
        #expect(again.eventID == first.eventID)
        #expect(again.attempt == 2)
        // The crashed claim's late outcome no longer counts; the live one does.
        #expect(try await webhooks.markDelivered(first, status: 200) == false)
        #expect(try await webhooks.markDelivered(again, status: 200) == true)
    }

    @Test("end to end: an ingested batch crossing the threshold reaches the receiver from the running server")
    func endToEnd() async throws {
        let receiver = WebhookReceiver()
        try await receiver.run { port in
            let (db, _, _) = try await Self.setUp("whe2e", port: port)
            var configuration = TestApp.configuration(db)
            configuration.webhooks.pollInterval = .milliseconds(50)
            let app = try await buildApplication(configuration)
            try await app.test(.live) { client in
                // gpt-4o, 1000 prompt + 500 completion tokens = 3750 units; 600,000 → 487,500 after 30 lines.
                let lines = (0..<30).map { LogLines.chat("e2e-\($0)", at: ISO8601DateFormatter().string(from: Date())) }
                try await client.execute(
                    uri: "/gateway/v1/logs", method: .post, headers: [.authorization: "Bearer test-gateway-secret"],
                    body: ByteBuffer(string: LogLines.ndjson(lines))
                ) { response in
                    #expect(response.status == .ok)
                }
                // The fold (every 100 ms) enqueues the event, the dispatcher then posts it: wait generously.
                let received = try await receiver.waitFor(1, timeout: .seconds(30))
                #expect(received.count == 1)
                #expect(received.first?.headers["x-tally-event"] == "balance.low")
                #expect(received.first?.signatureVerifies(secret: Self.secret) == true)
                #expect((received.first?.json["data"] as? [String: Any])?["quota"] as? Int == 487_500)
            }
        }
    }
}
