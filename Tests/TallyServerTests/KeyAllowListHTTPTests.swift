import Foundation
import TallyStore
import TallyTestSupport
import Testing

/// API keys' IP allow-lists on every route a key can call, through a real `tally serve`, checked
/// as new-api's `TokenAuth` checks them (docs/compatibility.md, "Authentication").
@Suite("API key IP allow-lists over HTTP", .serialized)
struct KeyAllowListHTTPTests {
    static let keyRoutes = [
        "/v1/models", "/v1/dashboard/billing/subscription", "/v1/dashboard/billing/usage",
        "/dashboard/billing/subscription", "/dashboard/billing/usage",
    ]

    static func get(
        _ server: ServerProcess, _ route: String, key: String,
        from client: String?
    ) async throws -> HTTP.Answer {
        var headers = ["Authorization": "Bearer \(key)"]
        if let client { headers["X-Forwarded-For"] = client }
        return try await HTTP.sendAsync("GET", server.baseURL + route, headers: headers)
    }

    static func errorCode(_ answer: HTTP.Answer) -> String? {
        (answer.object["error"] as? [String: Any])?["code"] as? String
    }

    /// A fresh database with one user holding a key limited to `allowIPs`, and a server on it
    /// started with `arguments`.
    static func listedKey(_ database: String, allowIPs: String = "10.0.0.0/8", serverArguments arguments: [String])
        async throws -> (seed: Seed, owner: User, key: (token: APIToken, key: String), server: ServerProcess)
    {
        let db = try await TestDatabase.create(database)
        let seed = Seed(db: db)
        let owner = try await seed.user(database)
        let key = try await seed.key(
            user: owner.user.id,
            TokenDraft(name: "listed", unlimitedQuota: true, allowIPs: allowIPs))
        return (seed, owner.user, key, try ServerProcess(databaseURL: db.url, arguments: arguments))
    }

    @Test("behind a trusted proxy: 200 inside the list, 403 ip_not_allowed outside it, on every key route")
    func everyKeyRoute() async throws {
        let (seed, owner, listed, server) = try await Self.listedKey(
            "keyallowlist", allowIPs: "10.0.0.0/8, 2001:db8::/32", serverArguments: ["--trusted-proxies", "127.0.0.1"])
        defer { server.stop() }
        let open = try await seed.key(user: owner.id)
        for route in Self.keyRoutes {
            for inside in ["10.1.2.3", "2001:db8::7"] {
                let answer = try await Self.get(server, route, key: listed.key, from: inside)
                #expect(answer.status == 200, "\(route) from \(inside): \(answer.text)")
            }
            // nil: no X-Forwarded-For, so the client is the peer itself (127.0.0.1).
            for outside in ["198.51.100.7", "2001:db9::1", nil] as [String?] {
                let answer = try await Self.get(server, route, key: listed.key, from: outside)
                #expect(answer.status == 403, "\(route) from \(outside ?? "the peer"): \(answer.text)")
                let error = answer.object["error"] as? [String: Any]
                #expect(error?["code"] as? String == "ip_not_allowed")
                #expect(error?["type"] as? String == "new_api_error")
                #expect((error?["message"] as? String)?.contains("key(\(listed.token.keyLast6))") == true)
                #expect((error?["tid"] as? String)?.count == 32)
            }
            #expect(try await Self.get(server, route, key: open.key, from: "198.51.100.7").status == 200, "\(route)")
        }
    }

    @Test("new-api's order: a disabled key is 401 wherever it comes from; the address is checked before the owner")
    func order() async throws {
        let (seed, owner, listed, server) = try await Self.listedKey(
            "keyallowlistorder", serverArguments: ["--trusted-proxies", "127.0.0.1"])
        defer { server.stop() }
        let route = "/v1/dashboard/billing/subscription"
        _ = try await seed.sql("UPDATE users SET status = 2 WHERE id = $1", [owner.id])
        let outside = try await Self.get(server, route, key: listed.key, from: "198.51.100.7")
        #expect(Self.errorCode(outside) == "ip_not_allowed")
        let inside = try await Self.get(server, route, key: listed.key, from: "10.0.0.1")
        #expect(Self.errorCode(inside) == "account_suspended")
        _ = try await seed.sql("UPDATE tokens SET status = 2 WHERE id = $1", [listed.token.id])
        let disabled = try await Self.get(server, route, key: listed.key, from: "198.51.100.7")
        #expect(disabled.status == 401 && Self.errorCode(disabled) == "invalid_token", "\(disabled.text)")
    }

    @Test("X-Forwarded-For from a peer that is not a trusted proxy does not get a key past its list")
    func untrustedForwardedFor() async throws {
        let (_, _, listed, server) = try await Self.listedKey("keyallowlistxff", serverArguments: [])
        defer { server.stop() }
        let answer = try await Self.get(server, "/v1/models", key: listed.key, from: "10.1.2.3")
        #expect(answer.status == 403 && Self.errorCode(answer) == "ip_not_allowed", "\(answer.text)")
    }
}
