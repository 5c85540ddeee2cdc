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

@Suite("pricing over HTTP", .serialized)
struct PricingHTTPTests {
    @Test("GET /api/pricing: every model's effective prices per group and the group table")
    func publicPricing() async throws {
        let db = try await TestDatabase.shared("pricing")
        try await db.prepareBilling(users: 1)
        try await TestApp.build(db).test(.live) { client in
            try await client.execute(uri: "/api/pricing", method: .get) { response in
                #expect(response.status == .ok)
                let object = try #require(
                    try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any])
                #expect(object["success"] as? Bool == true)
                let data = try #require(object["data"] as? [String: Any])
                let groups = try #require(data["groups"] as? [[String: Any]])
                #expect(groups.map { $0["name"] as? String } == ["default", "svip", "vip"])
                #expect(groups.first { $0["name"] as? String == "vip" }?["ratio"] as? String == "0.8")
                let models = try #require(data["models"] as? [[String: Any]])
                let gpt4o = try #require(models.first { $0["model"] as? String == "gpt-4o" })
                let prices = try #require(gpt4o["prices"] as? [String: [String: String]])
                #expect(prices["default"]?["input"] == "2.5")
                #expect(prices["vip"]?["input"] == "2")
                let claude = try #require(models.first { $0["model"] as? String == "claude-sonnet-4" })
                let claudePrices = try #require(claude["prices"] as? [String: [String: String]])
                #expect(claudePrices["svip"]?["input"] == "2")  // group price, not 0.6 × 3
                let gemini = try #require(models.first { $0["model"] as? String == "gemini-2.5-pro" })
                #expect((gemini["prices"] as? [String: [String: String]])?["svip"] == nil)  // svip is restricted
            }
        }
    }

    @Test("admin price routes: users are refused, admins list and load versions, bad sheets answer 400")
    func adminPrices() async throws {
        let db = try await TestDatabase.shared("pricing")
        try await db.prepareBilling(users: 1)
        let users = PostgresUserRepository(pool: db.pool)
        let (_, adminToken) = try await users.create(
            NewUser(username: "price-admin-\(UUID().uuidString.prefix(8))", role: .admin), by: .cli)
        let (_, userToken) = try await users.create(
            NewUser(username: "price-user-\(UUID().uuidString.prefix(8))"), by: .cli)
        try await TestApp.build(db).test(.live) { client in
            try await client.execute(uri: "/api/admin/prices", method: .get) { response in
                #expect(response.status == .unauthorized)
                let body = try ErrorBody(response.body)
                #expect(body.code == "missing_token")
                #expect(body.envelope == "system")
            }
            try await client.execute(uri: "/api/admin/prices", method: .get, headers: [.authorization: "Bearer nope"]) {
                response in
                #expect(response.status == .unauthorized)
                let body = try ErrorBody(response.body)
                #expect(body.code == "invalid_token")
            }
            try await client.execute(
                uri: "/api/admin/prices", method: .get, headers: [.authorization: "Bearer \(userToken)"]
            ) { response in
                #expect(response.status == .forbidden)
                let body = try ErrorBody(response.body)
                #expect(body.code == "insufficient_permissions")
                #expect(body.message == "Forbidden – insufficient permissions.")
            }
            let sheet = designPriceSheet.replacingOccurrences(of: "2026-01-01T00:00:00Z", with: "2026-12-01T00:00:00Z")
                .replacingOccurrences(of: #"gpt-4o: {input: "2.50""#, with: #"gpt-4o: {input: "5.00""#)
            try await client.execute(
                uri: "/api/admin/prices", method: .put, headers: [.authorization: adminToken],
                body: ByteBuffer(string: sheet)
            ) { response in
                #expect(response.status == .ok)
                let object = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]
                let data = object?["data"] as? [String: Any]
                #expect(data?["effective_from"] as? String == "2026-12-01 00:00:00.000000+00")
                #expect(data?["loaded_by"] as? String != "cli")
            }
            // Found by a review: a lenient reader took each of these for another instant.
            for bad in ["2026-11-01T00:00:00%2B0530", "2026-11-01T09:00:00%20JST", "2026-13-01T00:00:00Z"] {
                try await client.execute(
                    uri: "/api/admin/prices?effective_from=\(bad)", method: .put,
                    headers: [.authorization: "Bearer \(adminToken)"], body: ByteBuffer(string: sheet)
                ) { response in
                    #expect(response.status == .badRequest, "\(bad)")
                }
            }
            try await client.execute(
                uri: "/api/admin/prices", method: .put, headers: [.authorization: "Bearer \(adminToken)"],
                body: ByteBuffer(string: "models: {m: {input: \"-1\"}}")
            ) { response in
                #expect(response.status == .badRequest)
                let body = try ErrorBody(response.body)
                #expect(body.code == "invalid_request")
                #expect(body.message.contains("negative"))
            }
            try await client.execute(
                uri: "/api/admin/prices", method: .get, headers: [.authorization: "Bearer \(adminToken)"]
            ) { response in
                let object = try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any]
                #expect((object?["data"] as? [[String: Any]])?.count == 2)
            }
        }
        // The version in force at a request's time prices it: November at 2.50, December at 5.00.
        let book = PriceBook(versions: try await PostgresPriceRepository(pool: db.pool).all().map(\.version))
        let usage = Usage(promptTokens: 1_000_000)
        let lastOfNovember = try #require(PostgresTimestamp.parseRFC("2026-11-30T23:59:59Z"))
        let firstOfDecember = try #require(PostgresTimestamp.parseRFC("2026-12-01T00:00:00Z"))
        let november = try #require(book.version(at: lastOfNovember))
        let december = try #require(book.version(at: firstOfDecember))
        #expect(try rate(usage, model: "gpt-4o", group: "default", sheet: november.sheet).units == 1_250_000)
        #expect(try rate(usage, model: "gpt-4o", group: "default", sheet: december.sheet).units == 2_500_000)
        #expect(
            try await db.scalar(
                "SELECT count(*) FROM audit_log WHERE action = 'prices.load' AND actor LIKE 'price-admin-%'") == 1)
    }
}

extension PostgresTimestamp {
    /// RFC 3339 with a `T` and `Z`, as tests write times.
    static func parseRFC(_ text: String) -> Date? {
        parse(text.replacingOccurrences(of: "T", with: " ").replacingOccurrences(of: "Z", with: "+00"))
    }
}
