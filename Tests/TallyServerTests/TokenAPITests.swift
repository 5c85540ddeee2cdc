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

/// new-api's Token JSON, field by field (reference/new-api-wire.md §2), as Tally answers it.
let tokenFieldTypes: [String: String] = [
    "id": "int", "user_id": "int", "key": "string", "status": "int", "name": "string", "created_time": "int",
    "accessed_time": "int", "expired_time": "int", "remain_quota": "int", "unlimited_quota": "bool",
    "model_limits_enabled": "bool", "model_limits": "string", "allow_ips": "string", "used_quota": "int",
    "group": "string", "cross_group_retry": "bool", "DeletedAt": "null", "auto_groups": "null",
]

@Suite("System API: API keys")
struct TokenAPITests {
    @Test("GET /api/token/:id shows an enabled key past its expiry as 3, one with no quota left as 4")
    func displayedStatus() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user()
        let (expired, _) = try await seed.key(user: user.id, TokenDraft(name: "expired", unlimitedQuota: true))
        try await seed.sql("UPDATE tokens SET expires_at = now() - interval '1 hour' WHERE id = $1", [expired.id])
        let (exhausted, _) = try await seed.key(user: user.id, TokenDraft(name: "exhausted", remainQuota: 0))
        let (live, _) = try await seed.key(user: user.id, TokenDraft(name: "live", remainQuota: 10))
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            for (token, status) in [(expired, TokenStatus.expired), (exhausted, .exhausted), (live, .enabled)] {
                let answer = try await api.get("/api/token/\(token.id)", token: access)
                #expect(answer.dataObject["status"] as? Int == status.rawValue, "\(token.name)")
            }
        }
    }

    @Test("POST /api/token/ answers the new token, new-api's fields and types, with the full key once")
    func addToken() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user()
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let future = Int64(Date().timeIntervalSince1970) + 86_400
            let answer = try await api.post(
                "/api/token/", token: access,
                """
                {"name":"ci key","expired_time":\(future),"remain_quota":5000,"unlimited_quota":false,
                 "model_limits_enabled":true,"model_limits":"gpt-4o, claude-sonnet-4","allow_ips":"10.0.0.0/8\\n2001:db8::/32",
                 "group":"","some_future_field":{"x":1}}
                """)
            #expect(answer.status == 200)
            #expect(answer.success == true)
            #expect(answer.object["message"] as? String == "")
            // The full key is in this answer only: no cache may keep it.
            #expect(answer.headers[.cacheControl] == "no-store")
            let token = answer.dataObject
            #expect(jsonTypes(token) == tokenFieldTypes)
            let key = try #require(token["key"] as? String)
            #expect(key.wholeMatch(of: /sk-[0-9a-zA-Z]{48}/) != nil, "full key once: \(key)")
            #expect(token["user_id"] as? Int == Int(user.id))
            #expect(token["name"] as? String == "ci key")
            #expect(token["status"] as? Int == 1)
            #expect(int64(token["expired_time"]) == future)
            #expect(int64(token["remain_quota"]) == 5000)
            #expect(token["unlimited_quota"] as? Bool == false)
            #expect(token["model_limits_enabled"] as? Bool == true)
            #expect(token["model_limits"] as? String == "gpt-4o,claude-sonnet-4")
            #expect(token["allow_ips"] as? String == "10.0.0.0/8\n2001:db8::/32")
            #expect(int64(token["used_quota"]) == 0)
            #expect(token["group"] as? String == "")
            let now = Int64(Date().timeIntervalSince1970)
            #expect(abs(int64(token["created_time"])! - now) < 60)

            // The database holds the SHA-256 of the key and its last 6, never the key.
            let id = try #require(int64(token["id"]))
            let row = try await seed.sql(
                "SELECT row_to_json(t)::text, key_hash = $2::bytea, key_last6 FROM tokens t WHERE id = $1",
                [id, SecretHash(of: key)])
            let everything = try row[0].decode(0, as: String.self)
            #expect(!everything.contains(key))
            #expect(!everything.contains(String(key.dropFirst(3))))
            #expect(!everything.contains(String(key.dropFirst(3).prefix(20))))
            #expect(try row[0].decode(1, as: Bool.self))
            #expect(try row[0].decode(2, as: String.self) == String(key.suffix(6)))

            // Shown once: every later answer masks it as sk-… + last 6.
            let again = try await api.get("/api/token/\(id)", token: access)
            #expect(again.status == 200)
            #expect(again.dataObject["key"] as? String == "sk-\u{2026}" + key.suffix(6))
            #expect(jsonTypes(again.dataObject) == tokenFieldTypes)
            // And the key is checked where keys are used: this client (127.0.0.1) is outside its allow-list.
            let models = try await api.get("/v1/models", token: key)
            #expect(models.status == 403 && models.errorCode == "ip_not_allowed", "\(models.text)")
        }
    }

    @Test("GET /api/token/ lists the caller's keys newest first, masked, in new-api's page shape")
    func tokenList() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user()
        let (other, _) = try await seed.user()
        var created: [(APIToken, String)] = []
        for index in 0..<3 {
            created.append(
                try await seed.key(user: user.id, TokenDraft(name: "k\(index)", remainQuota: Int64(index) * 10)))
        }
        _ = try await seed.key(user: other.id)
        let keys = created
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let answer = try await api.get("/api/token/?p=1&size=10", token: access)
            #expect(answer.status == 200)
            #expect(answer.success == true)
            let data = answer.dataObject
            #expect(Set(data.keys) == ["page", "page_size", "total", "items"])
            #expect(data["page"] as? Int == 1)
            #expect(data["page_size"] as? Int == 10)
            #expect(data["total"] as? Int == 3)
            let items = try #require(data["items"] as? [[String: Any]])
            #expect(items.map { int64($0["id"]) } == keys.reversed().map { $0.0.id })
            for (item, (token, key)) in zip(items, keys.reversed()) {
                #expect(jsonTypes(item) == tokenFieldTypes)
                #expect(item["key"] as? String == "sk-\u{2026}" + key.suffix(6))
                #expect(item["name"] as? String == token.name)
                #expect(item["user_id"] as? Int == Int(user.id))
                #expect(item["expired_time"] as? Int == -1)
                #expect(answer.text.contains(key) == false)
            }
            // A limited key with nothing left reads 4 (exhausted), as new-api reports it.
            #expect(items.last?["status"] as? Int == 4)
            #expect(items.first?["status"] as? Int == 1)

            // Paging: 1-based p, page_size then ps then size, clamped to 1…100.
            let second = try await api.get("/api/token/?p=2&page_size=2", token: access)
            #expect(second.dataObject["page"] as? Int == 2)
            #expect((second.dataObject["items"] as? [Any])?.count == 1)
            let clamped = try await api.get("/api/token/?p=0&page_size=1000", token: access)
            #expect(clamped.dataObject["page"] as? Int == 1)
            #expect(clamped.dataObject["page_size"] as? Int == 100)
            let viaPS = try await api.get("/api/token/?ps=2&size=7", token: access)
            #expect(viaPS.dataObject["page_size"] as? Int == 2)
            let viaSize = try await api.get("/api/token/?page_size=-5&size=7", token: access)
            #expect(viaSize.dataObject["page_size"] as? Int == 7)
            let garbage = try await api.get("/api/token/?p=x&page_size=y", token: access)
            #expect(garbage.dataObject["page"] as? Int == 1)
            #expect(garbage.dataObject["page_size"] as? Int == 10)
        }
    }

    /// Found by a review: the route fell to `token/:id` and answered 404 "API key not found".
    @Test("GET /api/token/search: the caller's keys by name fragment and by the key's end, paged as the list")
    func tokenSearch() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user()
        let (other, _) = try await seed.user()
        let prod = try await seed.key(user: user.id, TokenDraft(name: "prod_eu", unlimitedQuota: true))
        _ = try await seed.key(user: user.id, TokenDraft(name: "laptop", unlimitedQuota: true))
        _ = try await seed.key(user: other.id, TokenDraft(name: "prod_eu", unlimitedQuota: true))
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            func names(_ query: String) async throws -> [String] {
                let answer = try await api.get("/api/token/search?\(query)", token: access)
                #expect(answer.status == 200, "\(answer.text)")
                return (answer.dataObject["items"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
            }
            let found = [
                try await names("keyword=prod"), try await names("keyword=_"), try await names("keyword="),
                try await names("token=\(prod.key.suffix(4))"), try await names("token=\(prod.key)"),
                try await names("keyword=prod&token=\(prod.key.dropLast())"),
            ]
            // LIKE's wildcards are matched as text; a key is matched by its end or as a whole.
            #expect(found == [["prod_eu"], ["prod_eu"], ["laptop", "prod_eu"], ["prod_eu"], ["prod_eu"], []])
        }
    }

    @Test("a user cannot see, change or delete another user's keys: 404 not_found")
    func isolation() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (alice, _) = try await seed.user("alice")
        let (_, bobAccess) = try await seed.user("bob")
        let (aliceKey, _) = try await seed.key(user: alice.id, TokenDraft(name: "alice's", remainQuota: 100))
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let get = try await api.get("/api/token/\(aliceKey.id)", token: bobAccess)
            #expect(get.status == 404)
            #expect(get.errorCode == "not_found")
            let put = try await api.put(
                "/api/token/", token: bobAccess, #"{"id":\#(aliceKey.id),"name":"mine now","remain_quota":999}"#)
            #expect(put.status == 404)
            #expect(put.errorCode == "not_found")
            let statusOnly = try await api.put(
                "/api/token/?status_only=1", token: bobAccess, #"{"id":\#(aliceKey.id),"status":2}"#)
            #expect(statusOnly.status == 404)
            let delete = try await api.delete("/api/token/\(aliceKey.id)", token: bobAccess)
            #expect(delete.status == 404)
            #expect(delete.errorCode == "not_found")
            let list = try await api.get("/api/token/", token: bobAccess)
            #expect(list.dataObject["total"] as? Int == 0)
            // Nothing changed.
            let row = try await seed.sql(
                "SELECT name, remain_quota, status, deleted_at IS NULL FROM tokens WHERE id = $1", [aliceKey.id])
            #expect(try row[0].decode(0, as: String.self) == "alice's")
            #expect(try row[0].decode(1, as: Int64.self) == 100)
            #expect(try row[0].decode(2, as: Int.self) == 1)
            #expect(try row[0].decode(3, as: Bool.self))
            // Ids that cannot exist are not found either.
            #expect(try await api.get("/api/token/abc", token: bobAccess).status == 404)
            #expect(try await api.get("/api/token/0", token: bobAccess).status == 404)
        }
    }

    @Test("PUT /api/token/ updates fields, status_only enables/disables, DELETE removes")
    func updateAndDelete() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user()
        let (token, key) = try await seed.key(user: user.id, TokenDraft(name: "before", remainQuota: 10))
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let updated = try await api.put(
                "/api/token/", token: access,
                """
                {"id":\(token.id),"name":"after","remain_quota":777,"model_limits_enabled":true,"model_limits":["a","b"],
                 "allow_ips":"192.168.1.7, 10.1.0.0/16","status":3}
                """)
            #expect(updated.status == 200)
            #expect(updated.dataObject["name"] as? String == "after")
            #expect(int64(updated.dataObject["remain_quota"]) == 777)
            #expect(updated.dataObject["model_limits"] as? String == "a,b")
            #expect(updated.dataObject["allow_ips"] as? String == "192.168.1.7\n10.1.0.0/16")
            #expect(updated.dataObject["status"] as? Int == 1, "a displayed status echoed back is ignored")
            #expect(updated.dataObject["key"] as? String == "sk-\u{2026}" + key.suffix(6))

            // Any value of status_only but an empty one is new-api's status-only update, 0 too.
            let disabled = try await api.put(
                "/api/token/?status_only=0", token: access, #"{"id":\#(token.id),"status":2,"name":"ignored"}"#)
            #expect(disabled.dataObject["status"] as? Int == 2)
            #expect(disabled.dataObject["name"] as? String == "after")
            // A disabled key is refused where keys are used.
            let refused = try await api.get("/v1/models", token: key)
            #expect(refused.status == 401)
            #expect(refused.errorCode == "invalid_token")
            let enabled = try await api.put(
                "/api/token/?status_only=1", token: access, #"{"id":\#(token.id),"status":1}"#)
            #expect(enabled.dataObject["status"] as? Int == 1)

            // An expired key cannot be re-enabled until its expiry moves.
            try await seed.sql(
                "UPDATE tokens SET expires_at = now() - interval '1 hour', status = 2 WHERE id = $1", [token.id])
            let expired = try await api.put(
                "/api/token/?status_only=1", token: access, #"{"id":\#(token.id),"status":1}"#)
            #expect(expired.status == 400)
            #expect(expired.errorMessage?.contains("expired") == true)

            let deleted = try await api.delete("/api/token/\(token.id)", token: access)
            #expect(deleted.status == 200)
            #expect(deleted.text == #"{"message":"","success":true}"#)
            #expect(try await api.get("/api/token/\(token.id)", token: access).status == 404)
            #expect(try await api.delete("/api/token/\(token.id)", token: access).status == 404)
            #expect(try await api.get("/v1/models", token: key).errorCode == "invalid_token")
        }
    }

    /// Found by a review: new-api's web UI deletes selected keys with this route, and Tally
    /// answered 404.
    @Test("POST /api/token/batch deletes the caller's keys among the ids, answers how many, and nothing else")
    func batchDelete() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user()
        let (other, _) = try await seed.user()
        let (first, firstKey) = try await seed.key(user: user.id, TokenDraft(name: "first", remainQuota: 10))
        let (second, _) = try await seed.key(user: user.id, TokenDraft(name: "second", remainQuota: 10))
        let (kept, keptKey) = try await seed.key(user: user.id, TokenDraft(name: "kept", remainQuota: 10))
        let (theirs, _) = try await seed.key(user: other.id, TokenDraft(name: "theirs", remainQuota: 10))
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let ids = [first.id, second.id, theirs.id, 999_999_999]
            let answer = try await api.post("/api/token/batch", token: access, #"{"ids":\#(ids)}"#)
            #expect(answer.status == 200)
            #expect(answer.success == true)
            #expect(answer.object["data"] as? Int == 2)
            let again = try await api.post("/api/token/batch", token: access, #"{"ids":[\#(first.id)]}"#)
            #expect(again.object["data"] as? Int == 0)
            #expect(try await api.get("/v1/models", token: firstKey).errorCode == "invalid_token")
            #expect(try await api.get("/v1/models", token: keptKey).status == 200)
            for body in [#"{"ids":[]}"#, #"{"ids":\#(Array(1...101))}"#, #"{}"#] {
                let refused = try await api.post("/api/token/batch", token: access, body)
                #expect(refused.status == 400, "\(body)")
                #expect(refused.errorCode == "invalid_request")
            }
        }
        let alive = try await seed.sql(
            "SELECT id FROM tokens WHERE id = ANY ($1::bigint[]) AND deleted_at IS NULL ORDER BY id",
            [PostgresArray.integers([first.id, second.id, kept.id, theirs.id])])
        #expect(try alive.map { try $0.decode(0, as: Int64.self) } == [kept.id, theirs.id].sorted())
    }

    /// Found by a review: new-api's own key query, which balance tools call with the key, was 404.
    @Test("GET /api/usage/token/ answers the key's figures as new-api's GetTokenUsage, with the key")
    func tokenUsage() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, _) = try await seed.user()
        let future = Int64(Date().timeIntervalSince1970) + 86_400
        let (limited, limitedKey) = try await seed.key(
            user: user.id,
            TokenDraft(
                name: "limited", expiredTime: future, remainQuota: 7_000, modelLimitsEnabled: true,
                modelLimits: "gpt-4o,o3"))
        try await seed.sql("UPDATE tokens SET used_quota = 3000 WHERE id = $1", [limited.id])
        let (_, unlimitedKey) = try await seed.key(user: user.id, TokenDraft(name: "open", unlimitedQuota: true))
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let answer = try await api.get("/api/usage/token/", token: limitedKey)
            #expect(answer.status == 200)
            #expect(answer.object["code"] as? Bool == true)
            #expect(answer.object["message"] as? String == "ok")
            let data = answer.dataObject
            #expect(data["object"] as? String == "token_usage")
            #expect(data["name"] as? String == "limited")
            #expect(int64(data["total_granted"]) == 10_000)
            #expect(int64(data["total_used"]) == 3_000)
            #expect(int64(data["total_available"]) == 7_000)
            #expect(data["unlimited_quota"] as? Bool == false)
            #expect(data["model_limits"] as? [String: Bool] == ["gpt-4o": true, "o3": true])
            #expect(data["model_limits_enabled"] as? Bool == true)
            #expect(int64(data["expires_at"]) == future)
            let open = try await api.get("/api/usage/token/", token: unlimitedKey).dataObject
            #expect(open["unlimited_quota"] as? Bool == true)
            #expect(int64(open["expires_at"]) == 0)
            #expect(open["model_limits"] as? [String: Bool] == [:])
            let unknown = try await api.get("/api/usage/token/", token: "sk-" + String(repeating: "x", count: 48))
            #expect(unknown.status == 401)
            #expect(unknown.errorCode == "invalid_token")
        }
    }

    /// Found by a review: the key query authenticated as a spending request does, so a key past
    /// its expiry, spent, or asked from outside its allow-list could not read why it stopped;
    /// new-api's TokenAuthReadOnly refuses only a disabled key and a banned owner.
    @Test(
        "GET /api/usage/token/ reads an expired, a spent and an address-limited key; a disabled one, or a suspended owner's, is refused"
    )
    func tokenUsageReadOnly() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, _) = try await seed.user()
        let (expired, expiredKey) = try await seed.key(user: user.id, TokenDraft(name: "old", unlimitedQuota: true))
        try await seed.sql("UPDATE tokens SET expires_at = now() - interval '1 minute' WHERE id = $1", [expired.id])
        let (spent, spentKey) = try await seed.key(user: user.id, TokenDraft(name: "spent", remainQuota: 1))
        try await seed.sql("UPDATE tokens SET remain_quota = 0, used_quota = 1 WHERE id = $1", [spent.id])
        let (_, fencedKey) = try await seed.key(
            user: user.id, TokenDraft(name: "fenced", unlimitedQuota: true, allowIPs: "192.0.2.0/24"))
        let (disabled, disabledKey) = try await seed.key(user: user.id, TokenDraft(name: "off", unlimitedQuota: true))
        try await seed.sql("UPDATE tokens SET status = 2 WHERE id = $1", [disabled.id])
        let (suspended, _) = try await seed.user()
        let (_, suspendedKey) = try await seed.key(
            user: suspended.id, TokenDraft(name: "owner off", unlimitedQuota: true))
        try await seed.sql("UPDATE users SET status = $2 WHERE id = $1", [suspended.id, UserStatus.disabled.rawValue])
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            for (name, key, refusal) in [
                ("old", expiredKey, "invalid_token"), ("spent", spentKey, "invalid_token"),
                ("fenced", fencedKey, "ip_not_allowed"),
            ] {
                let answer = try await api.get("/api/usage/token/", token: key)
                #expect(answer.status == 200, "\(name): \(answer.text)")
                #expect(answer.dataObject["name"] as? String == name)
                // Spending requests still refuse them.
                let spending = try await api.get("/v1/dashboard/billing/subscription", token: key)
                #expect(spending.errorCode == refusal, "\(name): \(spending.text)")
            }
            let refused = try await api.get("/api/usage/token/", token: disabledKey)
            #expect(refused.status == 401 && refused.errorCode == "invalid_token", "\(refused.text)")
            // new-api's TokenAuthReadOnly refuses a banned owner too.
            let banned = try await api.get("/api/usage/token/", token: suspendedKey)
            #expect(banned.status == 403 && banned.errorCode == "account_suspended", "\(banned.text)")
        }
    }

    @Test("bad input is refused field by field with a clear message, the tid and invalid_request")
    func validation() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (_, access) = try await seed.user()
        let closed = try await seed.group("closed", selectable: false)
        let open = try await seed.group("open")
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let past = Int64(Date().timeIntervalSince1970) - 60
            let cases: [(body: String, message: String)] = [
                (#"{"name":"\#(String(repeating: "x", count: 51))"}"#, "name is too long: at most 50 bytes, got 51"),
                (#"{"name":"\#(String(repeating: "é", count: 25))!"}"#, "name is too long: at most 50 bytes, got 51"),
                (#"{"expired_time":\#(past)}"#, "is in the past"),
                (#"{"expired_time":0}"#, "expired_time must be -1 (never expires) or a unix time in seconds"),
                (#"{"remain_quota":-1}"#, "remain_quota cannot be negative"),
                (#"{"group":"no-such-group"}"#, "unknown group \"no-such-group\""),
                (#"{"group":"\#(closed)"}"#, "group \"\(closed)\" is not available to this account"),
                (#"{"group":"bad group!"}"#, "is not a valid group name"),
                (#"{"allow_ips":"10.0.0.1/8"}"#, "has host bits set; the network is 10.0.0.0/8"),
                (#"{"allow_ips":"300.1.1.1"}"#, "is not an IPv4 or IPv6 address or CIDR range"),
                (#"{"allow_ips":"2001:db8::/129"}"#, "invalid prefix length"),
                (#"{"remain_quota":"lots"}"#, "remain_quota must be an integer"),
                (#"{"unlimited_quota":"yes"}"#, "unlimited_quota must be true or false"),
                (#"{"model_limits":42}"#, "model_limits must be"),
                (#"[1,2]"#, "the request body must be an object"),
                (#"{"name":"#, "the request body is not valid JSON"),
            ]
            for (body, message) in cases {
                let answer = try await api.post("/api/token/", token: access, body)
                #expect(answer.status == 400, "\(body)")
                #expect(answer.errorCode == "invalid_request", "\(body)")
                #expect(answer.errorMessage?.contains(message) == true, "\(body): \(answer.errorMessage ?? "")")
                #expect(TraceID.isValid(answer.object["tid"] as? String ?? ""))
                #expect(answer.object["success"] as? Bool == false)
            }
            let empty = try await api.call(.post, "/api/token/", token: access)
            #expect(empty.status == 400)
            // A selectable group is accepted; no key was created by the refusals.
            let ok = try await api.post(
                "/api/token/", token: access, #"{"name":"ok","group":"\#(open)","unlimited_quota":true}"#)
            #expect(ok.status == 200)
            #expect(ok.dataObject["group"] as? String == open)
            #expect(try await api.get("/api/token/", token: access).dataObject["total"] as? Int == 1)
            // An unlimited key as new-api lists it (its remain_quota counted down below 0) is
            // saved back as it is, renamed: new-api checks the quota of limited keys only.
            var listed = try #require(ok.dataObject as [String: Any]?)
            listed["remain_quota"] = -123_456
            listed["name"] = "renamed"
            let body = String(decoding: try JSONSerialization.data(withJSONObject: listed), as: UTF8.self)
            let saved = try await api.call(.put, "/api/token/", token: access, json: body)
            #expect(saved.status == 200, "\(saved.errorMessage ?? "")")
            #expect(saved.dataObject["name"] as? String == "renamed")
        }
    }
}
