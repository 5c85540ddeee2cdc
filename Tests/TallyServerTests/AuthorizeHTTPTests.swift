import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyPostgres
import TallyServer
import TallyStore
import TallyTestSupport
import Testing

/// A sheet with every limit authorize checks; gpt-4o costs 2.50 / 10.00 per 1M tokens.
let enforcementSheet = """
    effective_from: 2026-01-01T00:00:00Z
    groups:
      default: {ratio: "1"}
      narrow: {ratio: "1", models: [gpt-4o]}
    models:
      gpt-4o: {input: "2.50", output: "10.00", max_prompt_chars: 1000, default_max_tokens: 100}
      text-embedding-3-small: {input: "0.02", kind: embedding, max_input_chars: 50}
      dall-e-3:
        per_image: {"1024x1024/standard": "0.04", default: "0.04"}
        sizes: ["1024x1024"]
        max_n: 4
      unserved-model: {input: "1.00", output: "1.00"}
    """

/// Requests to the gateway routes of a live test server.
struct Gateway: Sendable {
    let client: any TestClientProtocol
    static let secret = "test-gateway-secret"

    func post(_ path: String, _ json: String, headers extra: HTTPFields = [:]) async throws -> Answer {
        var headers = extra
        headers[.authorization] = "Bearer \(Self.secret)"
        headers[.contentType] = "application/json"
        let response = try await client.execute(
            uri: "/gateway/v1\(path)", method: .post, headers: headers, body: ByteBuffer(string: json))
        let text = String(buffer: response.body)
        let body = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) ?? NSNull()
        return Answer(status: Int(response.status.code), headers: response.headers, body: body, text: text)
    }

    func authorize(
        key: String?, model: String = "gpt-4o", requestID: String = UUID().uuidString, ip: String? = nil,
        channel: Int64? = nil, estimate: String = #"{"prompt_tokens":1000,"max_tokens":500}"#,
        tid: String? = nil
    ) async throws -> Answer {
        var fields = [#""request_id":"\#(requestID)""#, #""model":"\#(model)""#, #""estimate":\#(estimate)"#]
        if let key { fields.append(#""key":"\#(key)""#) }
        if let ip { fields.append(#""ip":"\#(ip)""#) }
        if let channel { fields.append(#""channel_id":\#(channel)"#) }
        var headers: HTTPFields = [:]
        if let tid { headers[.xTid] = tid }
        return try await post("/authorize", "{\(fields.joined(separator: ","))}", headers: headers)
    }

    func settle(_ requestID: String, key: String, prompt: Int = 1000, completion: Int = 500) async throws -> Answer {
        try await post(
            "/logs",
            #"{"request_id":"\#(requestID)","created_at":"\#(Self.now)","key":"\#(key)","model":"gpt-4o","kind":"chat","status":200,"usage":{"prompt_tokens":\#(prompt),"completion_tokens":\#(completion)}}"#
        )
    }

    static var now: String { ISO8601DateFormatter().string(from: Date()) }
}

/// gpt-4o at 1000 prompt + 500 completion tokens: (1000 × 2.50 + 500 × 10.00) / 1M USD = 3,750 units.
let chatHold: Int64 = 3_750

@Suite("Enforcement: authorize / release / settle over HTTP")
struct AuthorizeHTTPTests {
    /// A fresh database with the enforcement sheet, one channel serving the default group.
    static func prepared() async throws -> (TestDatabase, Seed) {
        let db = try await TestDatabase.create("authorize")
        let seed = Seed(db: db)
        try await seed.prices(enforcementSheet)
        try await seed.sql("INSERT INTO groups (name) VALUES ('narrow')")
        _ = try await seed.channel(
            groups: ["default", "narrow"], models: ["gpt-4o", "text-embedding-3-small", "dall-e-3"])
        return (db, seed)
    }

    /// Found by a review: authorize read a group's `model_rpm_limit` (per user and model) and a
    /// key's own `rpm_limit`, but nothing but SQL could set them.
    @Test("a group's model_rpm_limit set through the admin API, and a key's rpm_limit set by the CLI, limit authorize")
    func rateLimitsFromTheAPIAndCLI() async throws {
        let (db, seed) = try await Self.prepared()
        let (_, adminAccess) = try await seed.user("admin", role: .admin)
        let (user, _) = try await seed.user(quota: 1_000_000)
        let key = try await seed.key(user: user.id).key
        let created = try TallyBinary.run(
            [
                "admin", "create-key", "--user", "\(user.id)", "--name", "slow", "--unlimited", "--rpm-limit", "1",
                "--json",
            ],
            databaseURL: db.url)
        let slowKey = try #require(
            (try JSONSerialization.jsonObject(with: Data(created.output.utf8)) as? [String: Any])?["key"] as? String)
        #expect(try await db.scalar("SELECT rpm_limit FROM tokens WHERE name = 'slow'") == 1)
        let embedding = (model: "text-embedding-3-small", estimate: #"{"input_chars":10}"#)
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let limited = try await api.put("/api/admin/groups/default", token: adminAccess, #"{"model_rpm_limit":2}"#)
            #expect(limited.status == 200 && limited.dataObject["model_rpm_limit"] as? Int == 2, "\(limited.text)")
            // A change that leaves the limit out keeps it.
            let described = try await api.put(
                "/api/admin/groups/default", token: adminAccess, #"{"description":"limited"}"#)
            #expect(described.dataObject["model_rpm_limit"] as? Int == 2, "\(described.text)")
            let gateway = Gateway(client: client)
            for _ in 0..<2 { #expect(try await gateway.authorize(key: key).status == 200) }
            Self.expectError(try await gateway.authorize(key: key), .rateLimited, model: "gpt-4o")
            // Another model of the same user has a count of its own.
            #expect(
                try await gateway.authorize(key: key, model: embedding.model, estimate: embedding.estimate).status
                    == 200)
            // Lifted, the user's third gpt-4o request goes through (once the change notice arrived).
            let lifted = try await api.put(
                "/api/admin/groups/default", token: adminAccess, #"{"model_rpm_limit":null}"#)
            #expect(lifted.dataObject["model_rpm_limit"] is NSNull, "\(lifted.text)")
            #expect(try await waitUntil(timeout: .seconds(10)) { try await gateway.authorize(key: key).status == 200 })
            // The key's own limit from the command line, with no group limit left to refuse it: one a minute.
            #expect(
                try await gateway.authorize(key: slowKey, model: embedding.model, estimate: embedding.estimate).status
                    == 200)
            Self.expectError(
                try await gateway.authorize(key: slowKey, model: embedding.model, estimate: embedding.estimate),
                .rateLimited, model: embedding.model)
        }
    }

    static func expectConflict(_ answer: Answer, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(answer.status == 409, "\(answer.text)", sourceLocation: sourceLocation)
        #expect(answer.errorMessage == Authorizer.requestIDInUse.message, sourceLocation: sourceLocation)
    }

    static func expectError(
        _ answer: Answer, _ entry: CatalogEntry, last6: String = "", model: String = "",
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(answer.status == entry.status, "\(answer.text)", sourceLocation: sourceLocation)
        #expect(answer.errorCode == entry.rawValue, "\(answer.text)", sourceLocation: sourceLocation)
        #expect(answer.errorMessage == entry.message(last6: last6, model: model), sourceLocation: sourceLocation)
        let tid = (answer.object["error"] as? [String: Any])?["tid"] as? String
        #expect(tid?.count == 32, sourceLocation: sourceLocation)
        #expect(answer.headers[.xTid] == tid, sourceLocation: sourceLocation)
    }

    @Test("every catalog entry authorize can answer, with its status, code, exact message and tid")
    func catalog() async throws {
        let (db, seed) = try await Self.prepared()
        let (user, _) = try await seed.user(quota: 1_000_000)
        let (admin, _) = try await seed.user("admin", role: .admin, quota: 1_000_000)
        let (poor, _) = try await seed.user("poor", quota: 10)
        let (suspended, _) = try await seed.user("susp", quota: 1_000_000)
        try await seed.sql("UPDATE users SET status = 2 WHERE id = $1", [suspended.id])
        let narrowGroup = try await seed.user("narrow", group: "narrow", quota: 1_000_000)
        let key = try await seed.key(user: user.id).key
        let adminKey = try await seed.key(user: admin.id).key
        let poorKey = try await seed.key(user: poor.id).key
        let suspendedKey = try await seed.key(user: suspended.id).key
        let narrowKey = try await seed.key(user: narrowGroup.user.id).key
        // A key of a group users could pick when it was made, and no longer can.
        try await seed.sql("INSERT INTO groups (name, selectable) VALUES ('vip', true)")
        let formerVIPKey = try await seed.key(
            user: user.id, TokenDraft(name: "k", unlimitedQuota: true, group: "vip")
        ).key
        try await seed.sql("UPDATE groups SET selectable = false WHERE name = 'vip'")
        let disabledKey = try await seed.key(user: user.id)
        try await seed.sql("UPDATE tokens SET status = 2 WHERE id = $1", [disabledKey.token.id])
        let expiredKey = try await seed.key(user: user.id)
        try await seed.sql(
            "UPDATE tokens SET expires_at = now() - interval '1 minute' WHERE id = $1", [expiredKey.token.id])
        let exhaustedKey = try await seed.key(
            user: user.id, TokenDraft(name: "k", remainQuota: 0, unlimitedQuota: false)
        ).key
        let ipKey = try await seed.key(
            user: user.id, TokenDraft(name: "k", unlimitedQuota: true, allowIPs: "10.0.0.0/8")
        ).key
        let limitedKey = try await seed.key(
            user: user.id,
            TokenDraft(
                name: "k", unlimitedQuota: true, modelLimitsEnabled: true,
                modelLimits: "text-embedding-3-small")
        ).key
        let rpmKey = try await seed.key(user: user.id)
        try await seed.sql("UPDATE tokens SET rpm_limit = 2 WHERE id = $1", [rpmKey.token.id])
        let disabledChannel = try await seed.channel(groups: ["default"], models: ["gpt-4o"], status: .disabled)
        nonisolated(unsafe) var rpmGranted = 0

        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            func last6(_ key: String) -> String { String(key.suffix(6)) }
            Self.expectError(try await gateway.authorize(key: nil), .missingToken)
            Self.expectError(try await gateway.authorize(key: "sk-" + String(repeating: "x", count: 48)), .invalidToken)
            Self.expectError(try await gateway.authorize(key: disabledKey.key), .invalidToken)
            Self.expectError(try await gateway.authorize(key: expiredKey.key), .invalidToken)
            Self.expectError(try await gateway.authorize(key: exhaustedKey), .invalidToken)
            // Also for a request that costs nothing, and again (the lease book asks each time).
            for _ in 0..<2 {
                Self.expectError(
                    try await gateway.authorize(key: exhaustedKey, estimate: #"{"prompt_tokens":0,"max_tokens":0}"#),
                    .invalidToken)
            }
            Self.expectError(try await gateway.authorize(key: suspendedKey), .accountSuspended)
            Self.expectError(try await gateway.authorize(key: key, channel: 1), .channelNotPermitted, last6: last6(key))
            Self.expectError(try await gateway.authorize(key: adminKey, channel: 999_999), .invalidChannelID)
            Self.expectError(try await gateway.authorize(key: adminKey, channel: disabledChannel.id), .channelDisabled)
            // new-api's form, the channel pinned after the key (sk-KEY-CHANNEL): admins only.
            Self.expectError(try await gateway.authorize(key: key + "-1"), .channelNotPermitted, last6: last6(key))
            Self.expectError(try await gateway.authorize(key: adminKey + "-999999"), .invalidChannelID)
            Self.expectError(try await gateway.authorize(key: adminKey + "-x"), .invalidChannelID)
            Self.expectError(try await gateway.authorize(key: adminKey + "-\(disabledChannel.id)"), .channelDisabled)
            let serving = try await seed.int("SELECT min(id) FROM channels WHERE status = 1")
            #expect(try await gateway.authorize(key: adminKey + "-\(serving)").status == 200)
            Self.expectError(
                try await gateway.authorize(key: ipKey, ip: "192.168.1.1"), .ipNotAllowed, last6: last6(ipKey))
            #expect(try await gateway.authorize(key: ipKey, ip: "10.1.2.3").status == 200)
            Self.expectError(try await gateway.authorize(key: formerVIPKey), .insufficientPermissions)
            Self.expectError(try await gateway.authorize(key: limitedKey), .modelNotAllowed, last6: last6(limitedKey))
            Self.expectError(
                try await gateway.authorize(
                    key: narrowKey, model: "text-embedding-3-small",
                    estimate: #"{"input_chars":10}"#), .modelNotAllowed, last6: last6(narrowKey))
            Self.expectError(try await gateway.authorize(key: key, model: "gpt-9"), .modelNotAvailable)
            Self.expectError(try await gateway.authorize(key: key, model: "unserved-model"), .modelNotAvailable)
            // Four at once on a key allowed 2 a minute: 2 pass, the others are rate_limited (a
            // minute boundary in the middle may let one more through: the window weighs the
            // previous minute).
            async let r1 = gateway.authorize(key: rpmKey.key, requestID: "rpm-1")
            async let r2 = gateway.authorize(key: rpmKey.key, requestID: "rpm-2")
            async let r3 = gateway.authorize(key: rpmKey.key, requestID: "rpm-3")
            async let r4 = gateway.authorize(key: rpmKey.key, requestID: "rpm-4")
            let burst = try await [r1, r2, r3, r4]
            rpmGranted = burst.filter { $0.status == 200 }.count
            #expect((2...3).contains(rpmGranted))
            let limited = try #require(burst.first { $0.status != 200 })
            Self.expectError(limited, .rateLimited, model: "gpt-4o")
            // Still over the limit, a retry of a granted request id is answered with its hold.
            let granted = try #require(burst.indices.first { burst[$0].status == 200 })
            let retry = try await gateway.authorize(key: rpmKey.key, requestID: "rpm-\(granted + 1)")
            #expect(retry.status == 200, "\(retry.text)")
            #expect(retry.object["duplicate"] as? Bool == true)
            #expect(int64(retry.object["hold_id"]) == int64(burst[granted].object["hold_id"]))
            Self.expectError(
                try await gateway.authorize(key: key, model: "dall-e-3", estimate: #"{"n":1}"#), .promptMissing)
            Self.expectError(try await gateway.authorize(key: key, estimate: #"{"prompt_chars":1001}"#), .promptTooLong)
            Self.expectError(
                try await gateway.authorize(
                    key: key, model: "text-embedding-3-small",
                    estimate: #"{"input_chars":51}"#), .textTooLong)
            Self.expectError(
                try await gateway.authorize(
                    key: key, model: "dall-e-3",
                    estimate: #"{"prompt":"a cat","size":"512x512"}"#), .sizeNotSupported)
            Self.expectError(
                try await gateway.authorize(
                    key: key, model: "dall-e-3",
                    estimate: #"{"prompt":"a cat","n":5}"#), .nNotWithinRange)
            Self.expectError(try await gateway.authorize(key: poorKey), .insufficientUserQuota)
            // The tid the gateway sends comes back in the error.
            let traced = try await gateway.authorize(key: poorKey, tid: "4bf92f3577b34da6a3ce929d0e0e4736")
            #expect((traced.object["error"] as? [String: Any])?["tid"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        }
        // Refusals reserve nothing: only the granted holds are open, and with the server stopped
        // (its leases returned) they are all that is reserved.
        // (The IP-allowed key's, the rate-limited key's and the admin's pinned channel's.)
        let granted = Int64(2 + rpmGranted)
        #expect(try await seed.int("SELECT sum(amount) FROM holds WHERE status = 'held'") == granted * chatHold)
        #expect(try await seed.int("SELECT sum(reserved) FROM user_balances") == granted * chatHold)
    }

    /// Found by a review: with no price version in force the answer was model_not_available
    /// before the key's own model limit was looked at, against DESIGN §5's order.
    @Test(
        "without a price version a key's model limit still answers first: model_not_allowed, then model_not_available")
    func modelLimitBeforePrices() async throws {
        let db = try await TestDatabase.create("authnoprices")
        let seed = Seed(db: db)
        let (user, _) = try await seed.user(quota: 1_000_000)
        let limited = try await seed.key(
            user: user.id,
            TokenDraft(name: "k", unlimitedQuota: true, modelLimitsEnabled: true, modelLimits: "gpt-4o")
        ).key
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            Self.expectError(
                try await gateway.authorize(key: limited, model: "dall-e-3"), .modelNotAllowed,
                last6: String(limited.suffix(6)))
            Self.expectError(try await gateway.authorize(key: limited, model: "gpt-4o"), .modelNotAvailable)
        }
    }

    @Test("a hold reserves the estimate; the log line settles it at its real cost; release and retries are idempotent")
    func lifecycle() async throws {
        let (db, seed) = try await Self.prepared()
        let (user, _) = try await seed.user(quota: 100_000)
        let key = try await seed.key(user: user.id, TokenDraft(name: "k", remainQuota: 50_000, unlimitedQuota: false))
            .key
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            let first = try await gateway.authorize(key: key, requestID: "req-1")
            #expect(first.status == 200, "\(first.text)")
            #expect(int64(first.object["held"]) == chatHold)
            #expect(int64(first.object["user_id"]) == user.id)
            #expect(first.object["group"] as? String == "default")
            #expect((first.object["tid"] as? String)?.count == 32)
            // A retry answers the same hold and reserves nothing more.
            let retry = try await gateway.authorize(key: key, requestID: "req-1")
            #expect(int64(retry.object["hold_id"]) == int64(first.object["hold_id"]))
            #expect(retry.object["duplicate"] as? Bool == true)
            #expect(try await seed.openHolds(user: user.id) == chatHold)
            #expect(try await seed.openHolds(user: user.id, tokenOnly: true) == chatHold)
            // What the user and the key can still lease excludes the hold.
            #expect(
                try await seed.int("SELECT quota - reserved FROM user_balances WHERE id = $1", [user.id]) <= 100_000
                    - chatHold)
            #expect(
                try await seed.int("SELECT remain_quota - reserved FROM token_balances WHERE user_id = $1", [user.id])
                    <= 50_000 - chatHold)

            // Settled at the real cost (1000 + 100 tokens: 0.0035 USD = 1,750 units), the reservation returned.
            #expect(try await gateway.settle("req-1", key: key, prompt: 1000, completion: 100).status == 200)
            #expect(try await seed.openHolds(user: user.id) == 0)
            #expect(try await Auditor(pool: db.pool).run().isEmpty)
            #expect(try await seed.int("SELECT quota FROM user_balances WHERE id = $1", [user.id]) == 100_000 - 1_750)
            #expect(
                try await seed.int("SELECT count(*) FROM holds WHERE request_id = 'req-1' AND status = 'settled'") == 1)

            // Release: returns the reservation once; again → 0; a settled hold stays settled.
            #expect(try await gateway.authorize(key: key, requestID: "req-2").status == 200)
            let released = try await gateway.post("/release", #"{"request_id":"req-2"}"#)
            #expect(released.status == 200)
            #expect(released.object["status"] as? String == "released")
            #expect(int64(released.object["released"]) == chatHold)
            let again = try await gateway.post("/release", #"{"request_id":"req-2"}"#)
            #expect(again.object["status"] as? String == "released")
            #expect(int64(again.object["released"]) == 0)
            let settled = try await gateway.post("/release", #"{"request_id":"req-1"}"#)
            #expect(settled.object["status"] as? String == "settled")
            #expect(int64(settled.object["released"]) == 0)
            #expect(try await gateway.post("/release", #"{"request_id":"nope"}"#).status == 404)
            #expect(try await seed.openHolds(user: user.id) == 0)
            // Found by a review: a retry of a closed hold, answered from the instance's memory
            // (which still said held) or from the stored hold, was granted with nothing reserved:
            // a released request ran on no units, a settled one for free (its line a duplicate).
            for closed in ["req-1", "req-2"] {
                let retried = try await gateway.authorize(key: key, requestID: closed)
                #expect(retried.status == 409, "\(closed): \(retried.text)")
                #expect(retried.object["code"] as? String == "conflict" || retried.text.contains("conflict"))
                #expect(retried.text.contains(closed == "req-1" ? "settled" : "released"), "\(retried.text)")
            }
            #expect(try await seed.openHolds(user: user.id) == 0)
            // A log line of a request that was never authorized is charged like any other.
            #expect(try await gateway.settle("req-3", key: key).status == 200)
            #expect(
                try await seed.int("SELECT quota FROM user_balances WHERE id = $1", [user.id]) == 100_000 - 1_750
                    - chatHold)
        }
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
        // Stopped, the server gave its leases back: nothing is reserved any more.
        #expect(try await seed.int("SELECT reserved FROM user_balances WHERE id = $1", [user.id]) == 0)
        #expect(try await seed.int("SELECT reserved FROM token_balances WHERE user_id = $1", [user.id]) == 0)
    }

    @Test("a request id another account's hold carries answers 409 and reserves nothing; its owner's retry is not hurt")
    func requestIDOfAnotherAccount() async throws {
        let (db, seed) = try await Self.prepared()
        let (owner, _) = try await seed.user(quota: 100_000)
        let (other, _) = try await seed.user(quota: 100_000)
        let ownerKey = try await seed.key(user: owner.id, TokenDraft(name: "k", unlimitedQuota: true)).key
        let otherKey = try await seed.key(user: other.id, TokenDraft(name: "k", unlimitedQuota: true)).key
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            let held = try await gateway.authorize(key: ownerKey, requestID: "shared")
            #expect(held.status == 200, "\(held.text)")
            let refused = try await gateway.authorize(key: otherKey, requestID: "shared")
            #expect(refused.status == 409, "\(refused.text)")
            #expect(refused.errorCode == "conflict")
            #expect(refused.errorMessage == Authorizer.requestIDInUse.message)
            #expect(refused.headers[.xTid]?.count == 32)
            #expect(try await seed.openHolds(user: other.id) == 0)
            let retry = try await gateway.authorize(key: ownerKey, requestID: "shared")
            #expect(int64(retry.object["hold_id"]) == int64(held.object["hold_id"]))
            #expect(retry.object["duplicate"] as? Bool == true)
            // The other account's log line of that id is its own request: charged to it, the hold left open.
            #expect(try await gateway.settle("shared", key: otherKey).status == 200)
            #expect(try await seed.openHolds(user: owner.id) == chatHold)
            #expect(
                try await seed.int("SELECT quota FROM user_balances WHERE id = $1", [other.id]) == 100_000 - chatHold)
            // A release that names another hold of the id (the refused request's, had async mode
            // answered it from memory) returns nothing; found by a review: by request id alone it
            // returned the owner's hold, whose request then ran on nothing reserved.
            let holdID = try #require(int64(held.object["hold_id"]))
            let mismatched = try await gateway.post("/release", #"{"request_id":"shared","hold_id":\#(holdID + 1)}"#)
            #expect(mismatched.status == 404)
            #expect(try await seed.openHolds(user: owner.id) == chatHold)
            let released = try await gateway.post("/release", #"{"request_id":"shared","hold_id":\#(holdID)}"#)
            #expect(released.object["status"] as? String == "released")
            #expect(int64(released.object["released"]) == chatHold)
        }
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    @Test(
        "a request id held for another key or model of the account answers 409, from memory and from PostgreSQL; only the same key and model retry it"
    )
    func requestIDOfAnotherKeyOrModel() async throws {
        let (db, seed) = try await Self.prepared()
        let (user, _) = try await seed.user(quota: 100_000)
        let key = try await seed.key(user: user.id, TokenDraft(name: "a", unlimitedQuota: true)).key
        let otherKey = try await seed.key(user: user.id, TokenDraft(name: "b", unlimitedQuota: true)).key
        let poorKey = try await seed.key(user: user.id, TokenDraft(name: "c", remainQuota: 1, unlimitedQuota: false))
            .key
        let embedding = (model: "text-embedding-3-small", estimate: #"{"input_chars":10}"#)
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            let held = try await gateway.authorize(key: key, requestID: "once")
            #expect(held.status == 200, "\(held.text)")
            // Answered from the instance's memory.
            Self.expectConflict(try await gateway.authorize(key: otherKey, requestID: "once"))
            Self.expectConflict(
                try await gateway.authorize(
                    key: key, model: embedding.model, requestID: "once", estimate: embedding.estimate))
        }
        // A fresh instance remembers nothing: the journal and the refusals' lookup find the stored
        // hold, and its key and model. Before, the other key was answered with this hold (its own
        // limit unchecked) and the poor key's refusal turned into that hold's grant.
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            Self.expectConflict(try await gateway.authorize(key: otherKey, requestID: "once"))
            Self.expectConflict(
                try await gateway.authorize(
                    key: key, model: embedding.model, requestID: "once", estimate: embedding.estimate))
            Self.expectError(try await gateway.authorize(key: poorKey, requestID: "once"), .insufficientUserQuota)
            let retry = try await gateway.authorize(key: key, requestID: "once")
            #expect(retry.status == 200, "\(retry.text)")
            let heldID = try await seed.int("SELECT id FROM holds WHERE request_id = 'once'")
            #expect(int64(retry.object["hold_id"]) == heldID && retry.object["duplicate"] as? Bool == true)
            #expect(try await seed.openHolds(user: user.id) == chatHold)
            // The other key's line of this id is another request's (a gateway ran it despite the
            // 409): charged to that key, it leaves the hold to its own key's line. Settled by user
            // and request id alone, it closed the hold and returned its reservation while the
            // hold's request still ran.
            let earlier = ISO8601DateFormatter().string(from: Date().addingTimeInterval(-5))
            let otherKeysLine =
                #"{"request_id":"once","created_at":"\#(earlier)","key":"\#(otherKey)","model":"gpt-4o","kind":"chat","status":200,"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#
            let charged = try await gateway.post("/logs", otherKeysLine)
            #expect(charged.status == 200 && int64(charged.object["accepted"]) == 1, "\(charged.text)")
            #expect(try await seed.openHolds(user: user.id) == chatHold)
            #expect(try await gateway.settle("once", key: key).status == 200)
            #expect(try await seed.openHolds(user: user.id) == 0)
            #expect(
                try await seed.int("SELECT quota FROM user_balances WHERE id = $1", [user.id]) == 100_000 - 2 * chatHold
            )
        }
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    @Test(
        "a settlement above its hold is charged in full; the overrun leaves the account negative and refuses the next hold"
    )
    func overrun() async throws {
        let (db, seed) = try await Self.prepared()
        let (user, _) = try await seed.user(quota: 4_000)
        let key = try await seed.key(user: user.id).key
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            // The overdraft's notification must find the server listening: it listens before it
            // takes requests.
            let listening =
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN tally_changes'"
            #expect(try await seed.int(listening) == 1)
            #expect(try await gateway.authorize(key: key, requestID: "big").status == 200)
            #expect(try await gateway.settle("big", key: key, prompt: 1000, completion: 1000).status == 200)
            #expect(try await seed.int("SELECT quota FROM user_balances WHERE id = $1", [user.id]) == 4_000 - 6_250)
            // The rest of the lease goes back when the overdraft's notification arrives (at once,
            // in practice); from then on nothing more is granted.
            var answer = try await gateway.authorize(key: key, estimate: #"{"prompt_tokens":1,"max_tokens":1}"#)
            let deadline = Date().addingTimeInterval(5)
            while answer.status == 200, Date() < deadline {
                try await Task.sleep(for: .milliseconds(50))
                answer = try await gateway.authorize(key: key, estimate: #"{"prompt_tokens":1,"max_tokens":1}"#)
            }
            Self.expectError(answer, .insufficientUserQuota)
            // The lease's rest is on its way back (it was taken out of memory first).
            let leased = "SELECT count(*) FROM user_leases WHERE user_id = $1 AND amount > 0"
            while try await seed.int(leased, [user.id]) != 0, Date() < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(try await seed.int(leased, [user.id]) == 0)
        }
    }

    @Test("holds past their TTL are returned by the sweeper")
    func expiry() async throws {
        let (db, seed) = try await Self.prepared()
        let (user, _) = try await seed.user(quota: 100_000)
        let key = try await seed.key(user: user.id).key
        var configuration = TestApp.configuration(db)
        configuration.holdTTLSeconds = 1
        try await buildApplication(configuration).test(.live) { client in
            let gateway = Gateway(client: client)
            #expect(try await gateway.authorize(key: key, requestID: "short").status == 200)
            // Journaled before the answer (sync); it may have expired already on a loaded machine.
            #expect(try await seed.int("SELECT count(*) FROM holds WHERE request_id = 'short'") == 1)
            let deadline = Date().addingTimeInterval(10)
            while try await seed.openHolds(user: user.id) != 0, Date() < deadline {
                try await Task.sleep(for: .milliseconds(200))
            }
            #expect(try await seed.openHolds(user: user.id) == 0)
            #expect(
                try await seed.int("SELECT count(*) FROM holds WHERE request_id = 'short' AND status = 'expired'") == 1)
            // The late log line is still charged (the service was delivered).
            #expect(try await gateway.settle("short", key: key).status == 200)
            #expect(
                try await seed.int("SELECT quota FROM user_balances WHERE id = $1", [user.id]) == 100_000 - chatHold)
        }
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
        // Stopped, the server gave its lease back: nothing is reserved.
        #expect(try await seed.int("SELECT reserved FROM user_balances WHERE id = $1", [user.id]) == 0)
    }

    /// Found by a review of the admin money paths: the lease taken out of the higher balance was
    /// spent on, and the account overdrawn by up to a lease.
    @Test("an admin lowering a balance takes the instance's lease back: the next hold sees the lowered balance")
    func loweredBalanceTakesLeaseBack() async throws {
        let (db, seed) = try await Self.prepared()
        let (user, _) = try await seed.user(quota: 100_000)
        let key = try await seed.key(user: user.id, TokenDraft(name: "k", unlimitedQuota: true)).key
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            #expect(try await gateway.authorize(key: key).status == 200)
            #expect(
                try await seed.int("SELECT reserved FROM user_balances WHERE id = $1", [user.id]) > 2 * chatHold,
                "the instance leased ahead of the hold")
            _ = try await AccountRepository(pool: db.pool).manage(
                id: user.id, .addQuota(mode: .override, value: 2 * chatHold), actorRole: nil, by: .cli)
            // The notice travels through LISTEN/NOTIFY: a moment, then room for one more hold only.
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await gateway.authorize(key: key).status == 200)
            Self.expectError(try await gateway.authorize(key: key), .insufficientUserQuota)
            #expect(try await seed.openHolds(user: user.id) == 2 * chatHold)
        }
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    @Test("a change to a key or user reaches the cache through NOTIFY, without waiting for the TTL")
    func invalidation() async throws {
        let (db, seed) = try await Self.prepared()
        let (user, _) = try await seed.user(quota: 1_000_000)
        let (token, key) = try await seed.key(user: user.id)
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            #expect(try await gateway.authorize(key: key).status == 200)
            func eventually(_ entry: CatalogEntry) async throws -> Answer {
                var answer = try await gateway.authorize(key: key)
                let deadline = Date().addingTimeInterval(10)
                while answer.errorCode != entry.rawValue, Date() < deadline {
                    try await Task.sleep(for: .milliseconds(100))
                    answer = try await gateway.authorize(key: key)
                }
                return answer
            }
            // The repositories announce their changes (migration 0014 dropped the triggers).
            let accounts = AccountRepository(pool: db.pool)
            _ = try await accounts.manage(id: user.id, .disable, actorRole: nil, by: .cli)
            Self.expectError(try await eventually(.accountSuspended), .accountSuspended)
            _ = try await accounts.manage(id: user.id, .enable, actorRole: nil, by: .cli)
            _ = try await TokenRepository(pool: db.pool).update(
                id: token.id, userID: user.id, TokenChanges(status: .disabled),
                statusOnly: true)
            Self.expectError(try await eventually(.invalidToken), .invalidToken)
        }
    }

    @Test("each refusal counts under its code in tally_authorize_total (counters made once, not per refusal)")
    func refusalsCounted() async throws {
        let (db, _) = try await Self.prepared()
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            func counter() async throws -> Int {
                let text = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
                return metricValue(#"tally_authorize_total{result="invalid_token"}"#, in: text)
            }
            let before = try await counter()
            for _ in 0..<3 {
                #expect(try await gateway.authorize(key: "sk-" + String(repeating: "0", count: 48)).status == 401)
            }
            // The counter is the process's: suites running alongside may add to it.
            #expect(try await counter() >= before + 3)
        }
    }

    @Test("an upstream 429 reported as provider_rate_limited is stored, free, and counted in /metrics")
    func providerRateLimited() async throws {
        let (db, seed) = try await Self.prepared()
        let (user, _) = try await seed.user(quota: 100_000)
        let key = try await seed.key(user: user.id).key
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            func counter() async throws -> Int {
                let text = String(buffer: try await client.execute(uri: "/metrics", method: .get).body)
                return metricValue("tally_provider_rate_limited_total", in: text)
            }
            let before = try await counter()
            #expect(try await gateway.authorize(key: key, requestID: "upstream-429").status == 200)
            let line =
                #"{"request_id":"upstream-429","created_at":"\#(Gateway.now)","key":"\#(key)","model":"gpt-4o","kind":"chat","status":429,"error":"provider_rate_limited","usage":{}}"#
            let answer = try await gateway.post("/logs", line)
            #expect(int64(answer.object["accepted"]) == 1, "\(answer.text)")
            // The counter is the process's: suites running alongside (LiteLLM's 429s) may add to it.
            #expect(try await counter() >= before + 1)
            #expect(try await seed.int("SELECT quota FROM user_balances WHERE id = $1", [user.id]) == 100_000)
            #expect(try await seed.openHolds(user: user.id) == 0)
        }
    }

    @Test("bad bodies answer 400 in the envelope and reserve nothing")
    func badBodies() async throws {
        let (db, seed) = try await Self.prepared()
        let (user, _) = try await seed.user(quota: 1_000_000)
        let key = try await seed.key(user: user.id).key
        try await TestApp.build(db).test(.live) { client in
            let gateway = Gateway(client: client)
            for body in [
                "", "{", "[]", #"{"key":5}"#, #"{"key":"\#(key)","model":"gpt-4o","estimate":{"max_tokens":-1}}"#,
                #"{"key":"\#(key)","model":"gpt-4o"}"#, #"{"key":"\#(key)","model":"gpt-4o","request_id":""}"#,
                #"{"key":"\#(key)","model":"gpt-4o","request_id":"a\u0000b"}"#,
            ] {
                let answer = try await gateway.post("/authorize", body)
                #expect(answer.status == 400, "\(body): \(answer.text)")
                #expect(answer.errorCode == "invalid_request", "\(body)")
            }
            let big = try await gateway.post("/authorize", #"{"key":"\#(String(repeating: "x", count: 70_000))"}"#)
            #expect(big.status == 413)
            let unauthenticated = try await client.execute(
                uri: "/gateway/v1/authorize", method: .post, body: ByteBuffer(string: "{}"))
            #expect(unauthenticated.status == .unauthorized)
        }
        #expect(try await seed.int("SELECT count(*) FROM holds") == 0)
    }
}
