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

@Suite("System API: logs")
struct LogAPITests {
    /// Inserts a request row as ingest would; `ago` seconds before now.
    static func request(
        _ seed: Seed, id: String, user: Int64, token: Int64, model: String, quota: Int64, status: Int = 200,
        prompt: Int64 = 10, completion: Int64 = 20, ago: Int = 5, channel: Int64? = nil, tid: String? = nil,
        error: String? = nil
    ) async throws {
        try await seed.sql(
            """
            INSERT INTO request_logs (request_id, created_at, user_id, token_id, channel_id, model, "group", kind, status,
                                      is_stream, duration_ms, ip, tid, error, prompt_tokens, completion_tokens, cached_tokens, quota)
            VALUES ($1, now() - make_interval(secs => $2), $3, $4, $5, $6, 'default', 'chat', $7, true, 2600, '203.0.113.7',
                    $8, $9, $10, $11, 3, $12)
            """, [id, ago, user, token, channel.map(Int.init), model, status, tid, error, prompt, completion, quota])
    }

    @Test(
        "GET /api/log/self: new-api's log rows, types 1/2/3/5, filters and paging; stat's quota counts a charged failure"
    )
    func selfLogs() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user("logs")
        let (other, _) = try await seed.user("other")
        let (token, _) = try await seed.key(user: user.id, TokenDraft(name: "log key", unlimitedQuota: true))
        let (otherToken, _) = try await seed.key(user: other.id)
        let run = UUID().uuidString
        try await Self.request(
            seed, id: "\(run)-1", user: user.id, token: token.id, model: "gpt-4o", quota: 1500, ago: 3600)
        try await Self.request(
            seed, id: "\(run)-2", user: user.id, token: token.id, model: "claude-sonnet-4", quota: 2500, ago: 30)
        try await Self.request(
            seed, id: "\(run)-3", user: user.id, token: token.id, model: "gpt-4o", quota: 700, status: 502,
            prompt: 0, completion: 0, ago: 20, error: "upstream timed out")
        try await Self.request(
            seed, id: "\(run)-4", user: other.id, token: otherToken.id, model: "gpt-4o", quota: 999, ago: 10)
        _ = try await BalanceRepository(pool: db.pool).topUp(
            userID: user.id, amount: 500_000, reason: "welcome",
            idempotencyKey: nil, by: .cli)
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let all = try await api.get("/api/log/self?p=1&page_size=10", token: access)
            #expect(all.status == 200)
            #expect(all.dataObject["total"] as? Int == 4)
            let items = try #require(all.dataObject["items"] as? [[String: Any]])
            #expect(items.map { $0["type"] as? Int } == [1, 5, 2, 2])
            #expect(items.map { $0["id"] as? Int } == [1, 2, 3, 4])
            let consume = items[2]
            #expect(
                jsonTypes(consume) == [
                    "id": "int", "user_id": "int", "created_at": "int", "type": "int", "content": "string",
                    "username": "string",
                    "token_name": "string", "model_name": "string", "quota": "int", "prompt_tokens": "int",
                    "completion_tokens": "int", "use_time": "int", "is_stream": "bool", "channel": "int",
                    "channel_name": "string", "token_id": "int", "group": "string", "ip": "string",
                    "request_id": "string",
                    "other": "string",
                ])
            #expect(consume["model_name"] as? String == "claude-sonnet-4")
            #expect(int64(consume["quota"]) == 2500)
            #expect(consume["token_name"] as? String == "log key")
            #expect(consume["username"] as? String == user.username)
            #expect(consume["use_time"] as? Int == 2)
            #expect(consume["request_id"] as? String == "\(run)-2")
            let other = try #require(
                try JSONSerialization.jsonObject(with: Data((consume["other"] as? String ?? "").utf8)) as? [String: Any]
            )
            #expect(int64(other["cache_tokens"]) == 3)
            #expect(items[1]["content"] as? String == "upstream timed out")
            #expect(items[0]["content"] as? String == "Top-up of $1.000000 (welcome)")
            #expect(int64(items[0]["quota"]) == 500_000)
            #expect(items[0]["request_id"] == nil)
            #expect(!all.text.contains("\(run)-4"), "another user's rows never show")

            let topups = try await api.get("/api/log/self?type=1", token: access)
            #expect(
                (topups.dataObject["items"] as? [[String: Any]])?.map { $0["content"] as? String } == [
                    "Top-up of $1.000000 (welcome)"
                ])
            let manage = try await api.get("/api/log/self?type=3", token: access)
            #expect(manage.status == 200)
            #expect(manage.dataObject["total"] as? Int == 0)
            let consumeOnly = try await api.get("/api/log/self?type=2", token: access)
            #expect((consumeOnly.dataObject["items"] as? [[String: Any]])?.map { $0["type"] as? Int } == [2, 2])
            let byModel = try await api.get("/api/log/self?model_name=gpt%25", token: access)
            #expect(byModel.dataObject["total"] as? Int == 2)
            let byToken = try await api.get("/api/log/self?token_name=log%20key&type=2", token: access)
            #expect(byToken.dataObject["total"] as? Int == 2)
            let now = Int(Date().timeIntervalSince1970)
            let recent = try await api.get(
                "/api/log/self?type=2&start_timestamp=\(now - 600)&end_timestamp=\(now)", token: access)
            #expect(recent.dataObject["total"] as? Int == 1)
            let paged = try await api.get("/api/log/self?p=2&page_size=3", token: access)
            #expect((paged.dataObject["items"] as? [[String: Any]])?.map { $0["id"] as? Int } == [4])
            #expect(try await api.get("/api/log/self?type=abc", token: access).status == 400)
            #expect(try await api.get("/api/log/self?type=9", token: access).status == 400)
            // No gateway line carries the upstream's request id: refused, not every row answered.
            for path in ["/api/log/self?upstream_request_id=abc", "/api/log/self/stat?upstream_request_id=abc"] {
                let refused = try await api.get(path, token: access)
                #expect(refused.status == 400, "\(path)")
                #expect(refused.errorMessage?.contains("upstream_request_id") == true)
            }
            #expect(try await api.get("/api/log/self?upstream_request_id=", token: access).status == 200)

            let stat = try await api.get("/api/log/self/stat", token: access)
            #expect(stat.status == 200)
            #expect(Set(stat.dataObject.keys) == ["quota", "rpm", "tpm"])
            // The failed request's charge (charge_failed) is spent too; rpm and tpm count consume rows.
            #expect(int64(stat.dataObject["quota"]) == 4700)
            #expect(int64(stat.dataObject["rpm"]) == 1)
            #expect(int64(stat.dataObject["tpm"]) == 30)
        }
    }

    /// Found missing by a review against new-api's wire format: a new-api console's admin log
    /// page and its stat answered 404.
    @Test("GET /api/log/ and /api/log/stat: a user's rows to an admin, by username and channel; users refused")
    func adminLogs() async throws {
        let db = try await TestDatabase.create("adminlogs")
        let seed = Seed(db: db)
        let (_, adminAccess) = try await seed.user("admin", role: .admin)
        let (user, access) = try await seed.user("logs")
        let (other, _) = try await seed.user("other")
        let (token, _) = try await seed.key(user: user.id)
        let (otherToken, _) = try await seed.key(user: other.id)
        let channel = try await seed.channel(groups: ["default"], models: ["gpt-4o"])
        try await Self.request(
            seed, id: "admin-1", user: user.id, token: token.id, model: "gpt-4o", quota: 1500, ago: 4,
            channel: channel.id)
        try await Self.request(seed, id: "admin-2", user: user.id, token: token.id, model: "gpt-4o", quota: 300, ago: 3)
        try await Self.request(
            seed, id: "admin-3", user: other.id, token: otherToken.id, model: "gpt-4o", quota: 700, ago: 2,
            channel: channel.id)
        _ = try await BalanceRepository(pool: db.pool).topUp(
            userID: user.id, amount: 500_000, reason: "welcome", idempotencyKey: nil, by: .cli)
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            func items(_ path: String) async throws -> [[String: Any]] {
                let answer = try await api.get(path, token: adminAccess)
                #expect(answer.status == 200, "\(path): \(answer.text)")
                return answer.dataObject["items"] as? [[String: Any]] ?? []
            }
            // Newest first: the top-up, then the user's two requests; the other user's never.
            let rows = try await items("/api/log/?p=1&page_size=10&username=\(user.username)")
            #expect(rows.map { $0["type"] as? Int } == [1, 2, 2])
            #expect(rows.map { $0["request_id"] as? String } == [nil, "admin-2", "admin-1"])
            #expect(rows.allSatisfy { $0["username"] as? String == user.username })
            // Admins see the channel's name (users see none, as in new-api).
            #expect(rows.last?["channel_name"] as? String == channel.name)
            // A channel filter leaves out the credits, which have no channel.
            #expect(
                try await items("/api/log/?username=\(user.username)&channel=\(channel.id)").map {
                    $0["request_id"] as? String
                } == ["admin-1"])
            #expect(try await items("/api/log/?username=\(user.username)&channel=3000000000").isEmpty)
            #expect(try await items("/api/log/?username=nobody-\(UInt32.random(in: 0...UInt32.max))").isEmpty)

            func stat(_ path: String) async throws -> [Int64?] {
                let answer = try await api.get(path, token: adminAccess)
                #expect(answer.status == 200, "\(path): \(answer.text)")
                return ["quota", "rpm", "tpm"].map { int64(answer.dataObject[$0]) }
            }
            #expect(try await stat("/api/log/stat?username=\(user.username)") == [1_800, 2, 60])
            #expect(try await stat("/api/log/stat?username=\(user.username)&channel=\(channel.id)") == [1_500, 1, 30])
            #expect(try await stat("/api/log/stat?username=nobody") == [0, 0, 0])

            // Every user's rows would be read and sorted whole: refused, naming what to give.
            for path in ["/api/log/", "/api/log/stat", "/api/log/?username="] {
                let refused = try await api.get(path, token: adminAccess)
                #expect(refused.status == 400, "\(path)")
                #expect(refused.errorMessage?.hasPrefix("username is required") == true)
            }
            #expect(try await api.get("/api/log/?username=x&channel=-1", token: adminAccess).status == 400)
            for path in ["/api/log/?username=\(user.username)", "/api/log/stat?username=\(user.username)"] {
                let refused = try await api.get(path, token: access)
                #expect(refused.status == 403, "\(path)")
                #expect(refused.errorCode == "insufficient_permissions")
            }
        }
    }

    /// Found by a review: the page's details were joined on (request id, created_at) alone, and
    /// two accounts may log the same request id at the same instant.
    @Test("a request id another account logged at the same instant: each sees its own row only, once")
    func sameRequestOfTwoAccounts() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user("twin-a")
        let (other, otherAccess) = try await seed.user("twin-b")
        let (token, _) = try await seed.key(user: user.id)
        let (otherToken, _) = try await seed.key(user: other.id)
        let id = "twin-\(UUID().uuidString)"
        try await seed.sql(
            """
            INSERT INTO request_logs (request_id, created_at, user_id, token_id, model, "group", kind, status, quota)
            SELECT $1, date_trunc('second', now()) - interval '1 minute', u, t, m, 'default', 'chat', 200, q
            FROM (VALUES ($2::bigint, $3::bigint, 'gpt-4o', 100::bigint), ($4, $5, 'claude-sonnet-4', 200)) AS r(u, t, m, q)
            """, [id, user.id, token.id, other.id, otherToken.id])
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            for (access, model) in [(access, "gpt-4o"), (otherAccess, "claude-sonnet-4")] {
                let logs = try await api.get("/api/log/self?p=1&page_size=10", token: access)
                let items = try #require(logs.dataObject["items"] as? [[String: Any]])
                #expect(items.map { $0["model_name"] as? String } == [model], "\(items)")
            }
        }
    }

    /// Found by a review: a rejected line was kept whole, so any admin could read, through this
    /// route, the full API key of the user (root included) whose request the line logged.
    @Test("a rejected line is kept with its API key masked: an admin reads sk-… and the last 6, never the key")
    func rejectedLineKeyMasked() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (_, adminAccess) = try await seed.user("admin", role: .admin)
        let (user, _) = try await seed.user()
        let (_, key) = try await seed.key(user: user.id)
        let requestID = UUID().uuidString
        let line =
            #"{"request_id":"\#(requestID)","created_at":"2026-11-10T12:00:00Z","key":"\#(key)","model":"no-such-model","usage":{"prompt_tokens":1},"meta":{"authorization":"Bearer \#(key)"}}"#
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let batch = try await client.execute(
                uri: "/gateway/v1/logs", method: .post, headers: [.authorization: "Bearer test-gateway-secret"],
                body: ByteBuffer(string: line + "\n")
            ) { $0.status }
            #expect(batch == .ok)
            let found = try await api.get("/api/admin/logs?request_id=\(requestID)", token: adminAccess)
            let rejects = try #require(found.dataObject["rejects"] as? [[String: Any]])
            let raw = try #require(rejects.first?["raw"] as? String)
            #expect(!raw.contains(key.dropFirst(3).prefix(24)), "\(raw)")
            #expect(raw.contains(#""key":"\#(Secrets.maskedKey(last6: Secrets.last6(key)))""#), "\(raw)")
            #expect(raw.contains("Bearer \u{2026}\(Secrets.last6(key))"), "\(raw)")
        }
    }

    @Test("GET /api/admin/logs finds request rows, ingest rejects and audit entries by tid or request id")
    func adminLookup() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (_, adminAccess) = try await seed.user("admin", role: .admin)
        let (user, _) = try await seed.user()
        let (token, _) = try await seed.key(user: user.id)
        let tid = TraceID.generate()
        let requestID = UUID().uuidString
        let channel = try await seed.channel(groups: ["default"], models: ["gpt-4o"])
        try await Self.request(
            seed, id: requestID, user: user.id, token: token.id, model: "gpt-4o", quota: 42, channel: channel.id,
            tid: tid)
        try await seed.sql(
            "INSERT INTO ingest_rejects (batch_tid, line, request_id, code, message, raw) VALUES ($1, 7, 'r-7', 'unknown_model', 'unknown model', '{}')",
            [tid])
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let byTid = try await api.get("/api/admin/logs?tid=\(tid)", token: adminAccess)
            #expect(byTid.status == 200)
            let logs = try #require(byTid.dataObject["logs"] as? [[String: Any]])
            #expect(logs.count == 1)
            #expect(logs.first?["request_id"] as? String == requestID)
            #expect(logs.first?["channel_name"] as? String == channel.name)
            let rejects = try #require(byTid.dataObject["rejects"] as? [[String: Any]])
            #expect(rejects.first?["code"] as? String == "unknown_model")
            #expect(rejects.first?["line"] as? Int == 7)
            let byRequest = try await api.get("/api/admin/logs?request_id=\(requestID)", token: adminAccess)
            #expect((byRequest.dataObject["logs"] as? [[String: Any]])?.count == 1)
            #expect(try await api.get("/api/admin/logs", token: adminAccess).status == 400)
            #expect(try await api.get("/api/admin/logs?tid=xyz", token: adminAccess).status == 400)
            // An admin action is found by its tid too.
            let created = try await api.post(
                "/api/admin/groups", token: adminAccess, #"{"name":"lookup-\#(UInt32.random(in: 0...UInt32.max))"}"#)
            let actionTid = try #require(created.headers[.xTid])
            let audit = try await api.get("/api/admin/logs?tid=\(actionTid)", token: adminAccess)
            #expect((audit.dataObject["audit"] as? [[String: Any]])?.first?["action"] as? String == "group.create")
        }
    }
}
