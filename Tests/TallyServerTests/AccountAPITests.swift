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

@Suite("System API: accounts, models, billing")
struct AccountAPITests {
    @Test("GET /api/user/self answers new-api's account map field by field")
    func accountInfo() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user("self", quota: 123_456)
        try await seed.sql(
            "UPDATE users SET used_quota = 789, request_count = 12, display_name = 'Self Test', email = 's@example.com' WHERE id = $1",
            [user.id])
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let answer = try await api.get("/api/user/self", token: access, headers: [.newAPIUser: String(user.id)])
            #expect(answer.status == 200)
            #expect(answer.success == true)
            let data = answer.dataObject
            #expect(
                jsonTypes(data) == [
                    "id": "int", "username": "string", "display_name": "string", "role": "int", "status": "int",
                    "email": "string", "github_id": "string", "discord_id": "string", "oidc_id": "string",
                    "wechat_id": "string", "telegram_id": "string", "group": "string", "quota": "int",
                    "used_quota": "int",
                    "request_count": "int", "aff_code": "string", "aff_count": "int", "aff_quota": "int",
                    "aff_history_quota": "int", "inviter_id": "int", "linux_do_id": "string", "setting": "string",
                    "stripe_customer": "string", "sidebar_modules": "string", "permissions": "object",
                ])
            #expect(int64(data["id"]) == user.id)
            #expect(data["username"] as? String == user.username)
            #expect(data["display_name"] as? String == "Self Test")
            #expect(data["email"] as? String == "s@example.com")
            #expect(data["role"] as? Int == 1)
            #expect(data["status"] as? Int == 1)
            #expect(data["group"] as? String == "default")
            #expect(int64(data["quota"]) == 123_456)
            #expect(int64(data["used_quota"]) == 789)
            #expect(int64(data["request_count"]) == 12)
            let permissions = try #require(data["permissions"] as? [String: Any])
            #expect(permissions["sidebar_settings"] as? Bool == true)
            #expect((permissions["sidebar_modules"] as? [String: Any])?["admin"] as? Bool == false)
            // The bare token (no "Bearer ") works, as in new-api.
            let bare = try await api.get("/api/user/self", headers: [.authorization: access])
            #expect(bare.status == 200)
        }
    }

    @Test("System API auth: missing_token, invalid_token, New-Api-User mismatch, account_suspended")
    func authErrors() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user()
        let (suspended, suspendedAccess) = try await seed.user("suspended")
        _ = try await AccountRepository(pool: db.pool).manage(id: suspended.id, .disable, actorRole: nil, by: .cli)
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let missing = try await api.get("/api/user/self")
            #expect(missing.status == 401)
            #expect(missing.errorCode == "missing_token")
            #expect(missing.errorMessage == CatalogEntry.missingToken.message())
            let invalid = try await api.get("/api/token/", token: "not-a-token")
            #expect(invalid.status == 401)
            #expect(invalid.errorCode == "invalid_token")
            let mismatch = try await api.get(
                "/api/user/self", token: access, headers: [.newAPIUser: String(user.id + 1)])
            #expect(mismatch.status == 401)
            #expect(mismatch.errorCode == "invalid_token")
            for uri in ["/api/user/self", "/api/token/", "/api/log/self", "/api/user/models"] {
                let answer = try await api.get(uri, token: suspendedAccess)
                #expect(answer.status == 403, "\(uri)")
                #expect(answer.errorCode == "account_suspended", "\(uri)")
                #expect(answer.errorMessage == "Account suspended.")
                #expect(answer.object["tid"] as? String == answer.headers[.xTid])
            }
        }
    }

    @Test("GET /api/user/token issues a new access token: the old one stops working, only a hash is stored")
    func accessToken() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user()
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let issued = try await api.get("/api/user/token", token: access)
            #expect(issued.status == 200)
            let fresh = try #require(issued.data as? String)
            #expect(fresh.count == 32)
            #expect(try await api.get("/api/user/self", token: access).errorCode == "invalid_token")
            #expect(try await api.get("/api/user/self", token: fresh).status == 200)
            let row = try await seed.sql(
                "SELECT row_to_json(u)::text, access_token_hash = $2::bytea FROM users u WHERE id = $1",
                [user.id, SecretHash(of: fresh)])
            #expect(try !row[0].decode(0, as: String.self).contains(fresh))
            #expect(try row[0].decode(1, as: Bool.self))
            let posted = try await api.post("/api/user/token", token: fresh, "{}")
            #expect((posted.data as? String)?.count == 32)
        }
    }

    static let modelSheet = """
        effective_from: 2026-01-01T00:00:00Z
        groups:
          default: {ratio: "1"}
          team: {ratio: "1"}
          partner: {ratio: "0.8", models: [gemini-2.5-pro, gpt-4o, other-group-model]}
        models:
          gpt-4o: {input: "2.50", output: "10.00", endpoint_types: [openai, openai-response]}
          claude-sonnet-4: {input: "3.00", output: "15.00"}
          gemini-2.5-pro: {input: "1.25", output: "10.00"}
          text-embedding-3-small: {kind: embedding, input: "0.02"}
          other-group-model: {input: "1.00"}
          disabled-model: {input: "1.00"}
        """

    @Test("GET /v1/models: the key's model limits ∩ its group's enabled channels ∩ priced models, new-api's list shape")
    func supportedModels() async throws {
        let db = try await TestDatabase.create("systemapimodels")
        let seed = Seed(db: db)
        let noPrices = try await seed.key(user: try await seed.user("early").user.id).key
        _ = try await GroupRepository(pool: db.pool).create(name: "team", by: .cli)
        _ = try await GroupRepository(pool: db.pool).create(name: "partner", by: .cli)
        let (user, access) = try await seed.user("models", group: "team")
        _ = try await seed.channel(
            groups: ["team"], models: ["gpt-4o", "claude-sonnet-4", "text-embedding-3-small", "unpriced-model"])
        _ = try await seed.channel(
            groups: ["team", "partner"], models: ["gemini-2.5-pro", "gpt-4o", "claude-sonnet-4"])
        _ = try await seed.channel(groups: ["team"], models: ["disabled-model"], status: .disabled)
        _ = try await seed.channel(groups: ["partner"], models: ["other-group-model"])
        let (_, all) = try await seed.key(user: user.id)
        let (_, limited) = try await seed.key(
            user: user.id,
            TokenDraft(
                name: "limited", unlimitedQuota: true, modelLimitsEnabled: true,
                modelLimits: "gpt-4o,gemini-2.5-pro,not-offered"))
        let (_, partner) = try await seed.key(
            user: user.id, TokenDraft(name: "partner", unlimitedQuota: true, group: "partner"))
        // Without a price version nothing is usable.
        try await TestApp.build(db).test(.live) { client in
            let empty = try await API(client: client).get("/v1/models", token: all)
            #expect(empty.status == 200)
            #expect((empty.object["data"] as? [Any])?.isEmpty == true)
        }
        try await seed.prices(Self.modelSheet)
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let answer = try await api.get("/v1/models", token: all)
            #expect(answer.status == 200)
            #expect(Set(answer.object.keys) == ["success", "data", "object"])
            #expect(answer.object["success"] as? Bool == true)
            #expect(answer.object["object"] as? String == "list")
            let data = try #require(answer.object["data"] as? [[String: Any]])
            // Offered to "team" by an enabled channel and priced: not unpriced-model, not disabled-model.
            #expect(
                data.map { $0["id"] as? String } == [
                    "claude-sonnet-4", "gemini-2.5-pro", "gpt-4o", "text-embedding-3-small",
                ])
            for model in data {
                #expect(
                    jsonTypes(model) == [
                        "id": "string", "object": "string", "created": "int", "owned_by": "string",
                        "supported_endpoint_types": "array",
                    ])
                #expect(model["object"] as? String == "model")
                #expect(model["created"] as? Int == 1_626_777_600)
            }
            #expect(data[0]["supported_endpoint_types"] as? [String] == ["anthropic", "openai"])
            #expect(data[0]["owned_by"] as? String == "anthropic")
            #expect(
                data[2]["supported_endpoint_types"] as? [String] == ["openai", "openai-response"],
                "the sheet's endpoint_types")
            #expect(data[3]["supported_endpoint_types"] as? [String] == ["embeddings"], "from the sheet's kind")

            let narrowed = try await api.get("/v1/models", token: limited)
            #expect(
                (narrowed.object["data"] as? [[String: Any]])?.map { $0["id"] as? String } == [
                    "gemini-2.5-pro", "gpt-4o",
                ])
            // The partner group's sheet entry allows only three models: claude-sonnet-4 is offered but not usable there.
            let theirs = try await api.get("/v1/models", token: partner)
            #expect(
                (theirs.object["data"] as? [[String: Any]])?.map { $0["id"] as? String } == [
                    "gemini-2.5-pro", "gpt-4o", "other-group-model",
                ])
            // Not the owner's group and no longer selectable: the key is refused, as authorize refuses it.
            try await seed.sql("UPDATE groups SET selectable = false WHERE name = 'partner'")
            let refused = try await api.get("/v1/models", token: partner)
            #expect(refused.status == 403 && refused.errorCode == "insufficient_permissions", "\(refused.text)")
            try await seed.sql("UPDATE groups SET selectable = true WHERE name = 'partner'")
            // A key from before the groups existed, in the default group: nothing offered there.
            let early = try await api.get("/v1/models", token: noPrices)
            #expect((early.object["data"] as? [Any])?.isEmpty == true)

            // Anthropic clients get Anthropic's list shape.
            let anthropic = try await api.get(
                "/v1/models", headers: [.xAPIKey: limited, .anthropicVersion: "2023-06-01"])
            #expect(anthropic.status == 200)
            #expect(anthropic.object["first_id"] as? String == "gemini-2.5-pro")
            #expect(anthropic.object["last_id"] as? String == "gpt-4o")
            #expect(anthropic.object["has_more"] as? Bool == false)

            // Several keys at once: new-api's TokenAuth on /v1/models reads Authorization, then
            // x-api-key, ?key=, x-goog-api-key, each sent one replacing the one before it.
            func ids(_ answer: Answer) -> [String?]? {
                (answer.object["data"] as? [[String: Any]])?.map { $0["id"] as? String }
            }
            let limitedList: [String?] = ["gemini-2.5-pro", "gpt-4o"]
            #expect(ids(try await api.get("/v1/models", token: all, headers: [.xAPIKey: limited])) == limitedList)
            #expect(ids(try await api.get("/v1/models?key=\(limited)", headers: [.xAPIKey: all])) == limitedList)
            #expect(
                ids(try await api.get("/v1/models?key=\(all)", headers: [.xGoogAPIKey: limited]))
                    == limitedList)
            #expect(ids(try await api.get("/v1/models", token: limited, headers: [.xAPIKey: ""])) == limitedList)
            #expect(ids(try await api.get("/v1/models/", headers: [.xAPIKey: limited])) == limitedList)
            // Elsewhere only Authorization counts, as in new-api.
            let elsewhere = try await api.get("/v1/dashboard/billing/subscription", headers: [.xAPIKey: limited])
            #expect(elsewhere.status == 401 && elsewhere.errorCode == "missing_token", "\(elsewhere.text)")

            // /api/user/models: the user's group, without the key's limits; ?group= another usable group.
            let userModels = try await api.get("/api/user/models", token: access)
            #expect(
                userModels.data as? [String] == [
                    "claude-sonnet-4", "gemini-2.5-pro", "gpt-4o", "text-embedding-3-small",
                ])
            let partnerModels = try await api.get("/api/user/models?group=partner", token: access)
            #expect(partnerModels.data as? [String] == ["gemini-2.5-pro", "gpt-4o", "other-group-model"])
            let unknown = try await api.get("/api/user/models?group=nope", token: access)
            #expect(unknown.data as? [String] == [])
        }
    }

    @Test(
        "/v1 key errors: missing_token, invalid_token for unknown, expired, exhausted keys; account_suspended; a channel suffix of a non-admin"
    )
    func keyErrors() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, _) = try await seed.user()
        let (_, key) = try await seed.key(user: user.id)
        let (admin, _) = try await seed.user("suffixadmin", role: .admin)
        let (_, adminKey) = try await seed.key(user: admin.id)
        let (expiredToken, expired) = try await seed.key(
            user: user.id, TokenDraft(name: "expired", unlimitedQuota: true))
        try await seed.sql(
            "UPDATE tokens SET expires_at = now() - interval '1 second' WHERE id = $1", [expiredToken.id])
        let (_, exhausted) = try await seed.key(user: user.id, TokenDraft(name: "exhausted", remainQuota: 0))
        let (lastSecondToken, lastSecond) = try await seed.key(
            user: user.id, TokenDraft(name: "last-second", unlimitedQuota: true))
        let (suspendedUser, _) = try await seed.user("suspended")
        let (_, suspendedKey) = try await seed.key(user: suspendedUser.id)
        try await seed.sql("UPDATE users SET status = 2 WHERE id = $1", [suspendedUser.id])
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            // A key works through the second its expiry names, as new-api's (`ExpiredTime < now`).
            try await seed.sql(
                "UPDATE tokens SET expires_at = now() - interval '200 milliseconds' WHERE id = $1", [lastSecondToken.id]
            )
            #expect(try await api.get("/v1/models", token: lastSecond).status == 200)
            for uri in ["/v1/models", "/v1/dashboard/billing/subscription", "/dashboard/billing/usage"] {
                let missing = try await api.get(uri)
                #expect(missing.status == 401)
                #expect(missing.errorCode == "missing_token")
                #expect(missing.object["error"] != nil, "gateway envelope on \(uri)")
                for key in ["sk-" + String(repeating: "a", count: 48), expired, exhausted] {
                    let answer = try await api.get(uri, token: key)
                    #expect(answer.status == 401, "\(uri)")
                    #expect(answer.errorCode == "invalid_token", "\(uri)")
                    #expect(answer.errorMessage == CatalogEntry.invalidToken.message())
                }
                let suspended = try await api.get(uri, token: suspendedKey)
                #expect(suspended.status == 403)
                #expect(suspended.errorCode == "account_suspended")
                // new-api's TokenAuth: a channel pinned after the key is an admin's alone.
                let pinned = try await api.get(uri, token: key + "-3")
                #expect(pinned.status == 403, "\(uri)")
                #expect(pinned.errorCode == "channel_not_permitted", "\(uri)")
                #expect(try await api.get(uri, token: adminKey + "-3").status == 200, "\(uri)")
            }
        }
    }

    @Test("after ingest over HTTP: billing usage, subscription, log rows and balances agree")
    func billingAfterIngest() async throws {
        let db = try await TestDatabase.create("systemapibilling")
        let seed = Seed(db: db)
        try await seed.prices(designPriceSheet)
        let (user, access) = try await seed.user("payer", quota: 10_000_000)
        let (token, key) = try await seed.key(user: user.id, TokenDraft(name: "metered", remainQuota: 2_000_000))
        let (_, unlimited) = try await seed.key(user: user.id)
        let lines = (1...4).map { index in
            #"{"request_id":"ingest-\#(index)","created_at":"2026-11-20T12:00:0\#(index)Z","key":"\#(key)","model":"gpt-4o","kind":"chat","status":200,"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#
        }.joined(separator: "\n")
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let ingested = try await api.post("/gateway/v1/logs", token: "test-gateway-secret", lines)
            #expect(ingested.status == 200)
            #expect(ingested.object["accepted"] as? Int == 4)
            // gpt-4o, default group, 1000 in / 500 out = 3750 units each (DESIGN §3).
            let charged: Int64 = 4 * 3750
            #expect(try await seed.int("SELECT used_quota FROM token_balances WHERE id = $1", [token.id]) == charged)
            #expect(
                try await seed.int(
                    "SELECT coalesce(sum(quota), 0)::bigint FROM request_logs WHERE token_id = $1", [token.id])
                    == charged)

            let usage = try await api.get("/v1/dashboard/billing/usage", token: key)
            #expect(double(usage.object["total_usage"]) == Double(charged) / 5000)  // cents
            let subscription = try await api.get("/v1/dashboard/billing/subscription", token: key)
            #expect(double(subscription.object["hard_limit_usd"]) == 4.0)  // (remain + used) = 2,000,000 units
            // The unlimited key reports the account: its used quota is the same charge.
            let account = try await api.get("/v1/dashboard/billing/usage", token: unlimited)
            #expect(double(account.object["total_usage"]) == Double(charged) / 5000)

            let me = try await api.get("/api/user/self", token: access)
            #expect(int64(me.dataObject["quota"]) == 10_000_000 - charged)
            #expect(int64(me.dataObject["used_quota"]) == charged)
            #expect(int64(me.dataObject["request_count"]) == 4)
            let listed = try await api.get("/api/token/\(token.id)", token: access)
            #expect(int64(listed.dataObject["remain_quota"]) == 2_000_000 - charged)
            #expect(int64(listed.dataObject["used_quota"]) == charged)
            let logs = try await api.get("/api/log/self?type=2", token: access)
            #expect(logs.dataObject["total"] as? Int == 4)
            #expect(
                (logs.dataObject["items"] as? [[String: Any]])?.allSatisfy {
                    int64($0["quota"]) == 3750 && ($0["token_name"] as? String) == "metered"
                } == true)
            let stat = try await api.get("/api/log/self/stat", token: access)
            #expect(int64(stat.dataObject["quota"]) == charged)
        }
    }

    @Test("billing subscription and usage report the key's quota when limited, else 100000000 and the account's usage")
    func billingFigures() async throws {
        let db = try await TestDatabase.shared("systemapi")
        let seed = Seed(db: db)
        let (user, _) = try await seed.user("billing", quota: 10_000_000)
        let expiry = Int64(Date().timeIntervalSince1970) + 3600
        let (limitedToken, limited) = try await seed.key(
            user: user.id, TokenDraft(name: "limited", expiredTime: expiry, remainQuota: 1_250_000))
        let (_, unlimited) = try await seed.key(user: user.id)
        // What settling requests leaves behind: the key spent 250,000 units, the account 1,000,000.
        try await seed.sql(
            "UPDATE tokens SET remain_quota = remain_quota - 250000, used_quota = used_quota + 250000 WHERE id = $1",
            [limitedToken.id])
        try await seed.sql(
            "UPDATE users SET quota = quota - 1000000, used_quota = used_quota + 1000000 WHERE id = $1", [user.id])
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            for prefix in ["/v1/dashboard/billing", "/dashboard/billing"] {
                let subscription = try await api.get("\(prefix)/subscription", token: limited)
                #expect(subscription.status == 200)
                #expect(
                    Set(subscription.object.keys) == [
                        "access_until", "has_payment_method", "hard_limit_usd",
                        "object", "soft_limit_usd", "system_hard_limit_usd",
                    ])
                #expect(subscription.object["object"] as? String == "billing_subscription")
                #expect(subscription.object["has_payment_method"] as? Bool == true)
                // remain 1,000,000 + used 250,000 = 1,250,000 units = 2.5 USD.
                #expect(double(subscription.object["hard_limit_usd"]) == 2.5)
                #expect(double(subscription.object["soft_limit_usd"]) == 2.5)
                #expect(double(subscription.object["system_hard_limit_usd"]) == 2.5)
                #expect(int64(subscription.object["access_until"]) == expiry)
                let usage = try await api.get("\(prefix)/usage", token: limited)
                #expect(usage.object["object"] as? String == "list")
                // 250,000 units = 0.5 USD = 50 cents.
                #expect(double(usage.object["total_usage"]) == 50)

                let unlimitedSubscription = try await api.get("\(prefix)/subscription", token: unlimited)
                #expect(double(unlimitedSubscription.object["hard_limit_usd"]) == 100_000_000)
                #expect(int64(unlimitedSubscription.object["access_until"]) == 0)
                // The account used 1,000,000 units = 2 USD = 200 cents.
                let unlimitedUsage = try await api.get("\(prefix)/usage", token: unlimited)
                #expect(double(unlimitedUsage.object["total_usage"]) == 200)
            }
        }
    }
}
