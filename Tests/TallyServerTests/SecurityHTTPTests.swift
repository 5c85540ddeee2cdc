import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyServer
import TallyStore
import TallyTestSupport
import Testing

/// DESIGN §11 and docs/security.md: per-address limits on failed credentials, secrets never in
/// the log. Each test builds its own server, so limiter state is its own.
@Suite("security over HTTP")
struct SecurityHTTPTests {
    static let secret = "test-gateway-secret"

    static func database() async throws -> TestDatabase {
        let db = try await TestDatabase.shared("security")
        try await db.prepareBilling(users: 3)
        return db
    }

    // Windows of an hour, so a slow, loaded machine cannot let one end in the middle of a test.
    @Test(
        "wrong credentials from one address: 429 too_many_failed_auth with a tid and Retry-After once the limit is reached, on every route; missing ones do not count"
    )
    func failedAuthLimit() async throws {
        let db = try await Self.database()
        let (_, access) = try await Seed(db: db).user("limited")
        try await TestApp.build(
            db,
            {
                $0.failedAuthLimit = 3; $0.failedAuthWindowSeconds = 3600
            }
        ).test(.live) { client in
            let api = API(client: client)
            for _ in 0..<10 {
                #expect(try await api.get("/api/user/self").errorCode == "missing_token")
            }
            #expect(try await api.get("/api/user/self", token: access).status == 200)
            #expect(try await api.get("/api/user/self", token: "not-a-token").errorCode == "invalid_token")
            #expect(
                try await api.get("/v1/models", token: "sk-" + String(repeating: "x", count: 48)).errorCode
                    == "invalid_token")
            #expect(try await api.get("/api/token/", token: "still-not-a-token").errorCode == "invalid_token")
            // The clients' credentials are counted apart from the gateway's secret: the gateway
            // behind the same address still gets in.
            #expect(try await api.post("/gateway/v1/logs", token: Self.secret, LogLines.chat("limit-0")).status == 200)
            // A doubled slash is routed to the gateway, and counted there too (found by a review:
            // counted with the clients', it was refused by their exhausted count, or added to it).
            for path in ["/gateway/v1/logs", "//gateway/v1/logs", "/gateway/v1/logs"] {
                let gateway = try await api.post(path, token: "wrong-secret", LogLines.chat("limit-1"))
                #expect(gateway.errorCode == "invalid_token", "\(path)")
            }
            // The fourth attempt is refused before any credential is looked at, even a right one.
            for (uri, token, envelope) in [
                ("/gateway/v1/logs", Self.secret, "gateway"), ("/api/user/self", access, "system"),
            ] {
                let blocked = try await api.call(
                    uri.hasPrefix("/gateway") ? .post : .get, uri, token: token,
                    json: uri.hasPrefix("/gateway") ? LogLines.chat("limit-2") : nil)
                #expect(blocked.status == 429)
                #expect(blocked.errorCode == "too_many_failed_auth")
                let tid = try #require(blocked.headers[.xTid])
                #expect(TraceID.isValid(tid))
                let body = try ErrorBody(ByteBuffer(string: blocked.text))
                #expect(body.tid == tid && body.envelope == envelope)
                let retryAfter = try #require(blocked.headers[.retryAfter].flatMap(Int.init))
                #expect((1...3600).contains(retryAfter))
            }
        }
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'limit-%'") == 1)
    }

    /// Found by a review of the console: any web page could lock its visitor's address out of
    /// the console and the API with image tags naming `/v1/models?key=<wrong>`, which the browser
    /// sends cross-site without asking.
    @Test("wrong keys in the URL alone count apart: they block only further keys in the URL, never header credentials")
    func keysInURLCountApart() async throws {
        let db = try await Self.database()
        let (user, access) = try await Seed(db: db).user("url-keys")
        let key = try await Seed(db: db).key(user: user.id).key
        try await TestApp.build(
            db,
            {
                $0.failedAuthLimit = 2; $0.failedAuthWindowSeconds = 3600
            }
        ).test(.live) { client async throws in
            let api = API(client: client)
            let wrong = "sk-" + String(repeating: "x", count: 48)
            for _ in 0..<2 {
                #expect(try await api.get("/v1/models?key=\(wrong)").errorCode == "invalid_token")
            }
            #expect(try await api.get("/v1/models?key=\(key)").errorCode == "too_many_failed_auth")
            #expect(try await api.get("/api/user/self", token: access).status == 200)
            #expect(try await api.get("/v1/models", token: key).status == 200)
            // A header's wrong credentials still count where they did.
            for _ in 0..<2 {
                #expect(try await api.get("/api/user/self", token: "not-a-token").errorCode == "invalid_token")
            }
            #expect(try await api.get("/api/user/self", token: access).errorCode == "too_many_failed_auth")
        }
    }

    /// Found by a review of the operator's side: a server started without a secret refused
    /// every gateway call as a wrong secret, so a few batches later the gateway's address was
    /// locked out (429), which sent the operator looking at the gateway instead of the server.
    @Test("without a gateway secret every gateway call is refused 401, and no refusal counts as a failed login")
    func noGatewaySecret() async throws {
        let db = try await Self.database()
        let (_, access) = try await Seed(db: db).user("no-secret")
        try await TestApp.build(
            db,
            {
                $0.gatewaySecret = ""; $0.failedAuthLimit = 2; $0.failedAuthWindowSeconds = 3600
            }
        ).test(.live) { client in
            let api = API(client: client)
            for index in 0..<5 {
                let refused = try await api.post(
                    "/gateway/v1/logs", token: index == 0 ? Self.secret : "anything",
                    LogLines.chat("no-secret-\(index)"))
                #expect(refused.status == 401 && refused.errorCode == "invalid_token", "attempt \(index)")
            }
            #expect(try await api.get("/api/user/self", token: access).status == 200)
        }
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'no-secret-%'") == 0)
    }

    @Test("unknown redemption codes count as failed credentials")
    func redemptionGuessing() async throws {
        let db = try await Self.database()
        let (_, access) = try await Seed(db: db).user("guesser")
        try await TestApp.build(
            db,
            {
                $0.failedAuthLimit = 2; $0.failedAuthWindowSeconds = 3600
            }
        ).test(.live) { client in
            let api = API(client: client)
            for _ in 0..<2 {
                let guess = try await api.post(
                    "/api/user/topup", token: access, #"{"key":"0123456789abcdef0123456789abcdef"}"#)
                #expect(guess.status == 400 && guess.errorMessage == "invalid redemption code")
            }
            #expect(try await api.get("/api/user/self", token: access).errorCode == "too_many_failed_auth")
        }
    }

    @Test(
        "X-Forwarded-For names the client only behind a trusted proxy; otherwise it cannot be used to dodge the limit")
    func forwardedFor() async throws {
        let db = try await Self.database()
        let wrong: HTTPFields = [.authorization: "Bearer wrong"]
        @Sendable func forwarded(_ address: String) -> HTTPFields {
            var fields = wrong
            fields[HTTPField.Name("X-Forwarded-For")!] = "10.9.9.9, \(address)"
            return fields
        }
        try await TestApp.build(
            db,
            {
                $0.failedAuthLimit = 2; $0.failedAuthWindowSeconds = 3600
            }
        ).test(.live) { client in
            for index in 0..<3 {
                let code = try await client.execute(
                    uri: "/api/user/self", method: .get, headers: forwarded("198.51.100.\(index)")
                ) { try ErrorBody($0.body).code }
                #expect(
                    code == (index < 2 ? "invalid_token" : "too_many_failed_auth"), "untrusted peer, attempt \(index)")
            }
        }
        try await TestApp.build(
            db,
            {
                $0.failedAuthLimit = 2; $0.failedAuthWindowSeconds = 3600;
                $0.trustedProxies = try! IPAllowList.parse("127.0.0.1")
            }
        ).test(.live) { client in
            for _ in 0..<2 {
                _ = try await client.execute(uri: "/api/user/self", method: .get, headers: forwarded("198.51.100.7")) {
                    $0.status
                }
            }
            let blocked = try await client.execute(
                uri: "/api/user/self", method: .get, headers: forwarded("198.51.100.7")
            ) { try ErrorBody($0.body).code }
            #expect(blocked == "too_many_failed_auth")
            let other = try await client.execute(
                uri: "/api/user/self", method: .get, headers: forwarded("198.51.100.8")
            ) { try ErrorBody($0.body).code }
            #expect(other == "invalid_token")
            // An IPv6 client counts by its /64: two addresses of one /64 share a count.
            for address in ["2001:db8:5:6::1", "2001:db8:5:6::2"] {
                _ = try await client.execute(uri: "/api/user/self", method: .get, headers: forwarded(address)) {
                    $0.status
                }
            }
            let sameNetwork = try await client.execute(
                uri: "/api/user/self", method: .get, headers: forwarded("2001:db8:5:6:abcd::3")
            ) { try ErrorBody($0.body).code }
            #expect(sameNetwork == "too_many_failed_auth")
        }
    }

    @Test("the limiter's window: blocked after the limit, free again when the window ends, bounded memory")
    func limiterWindow() {
        let limiter = FailedAuthLimiter(limit: 2, window: .seconds(60), capacity: 4)
        let start = ContinuousClock.now
        limiter.recordFailure("a", now: start)
        #expect(limiter.blockedFor("a", now: start) == nil)
        #expect(!limiter.mayBlock(now: start), "below the limit nobody is blocked: requests skip the check")
        limiter.recordFailure("a", now: start + .seconds(1))
        #expect(limiter.mayBlock(now: start + .seconds(2)))
        #expect(!limiter.mayBlock(now: start + .seconds(60)), "the only window at the limit has ended")
        #expect(limiter.blockedFor("a", now: start + .seconds(2)) == .seconds(58))
        #expect(limiter.blockedFor("b", now: start + .seconds(2)) == nil)
        #expect(limiter.blockedFor("a", now: start + .seconds(60)) == nil)
        for index in 0..<100 { limiter.recordFailure("x\(index)", now: start + .seconds(61)) }
        limiter.recordFailure("x99", now: start + .seconds(61))
        #expect(limiter.blockedFor("x99", now: start + .seconds(62)) != nil, "the newest addresses are kept")
    }

    @Test("no issued key, access token, redemption code or the gateway secret in the log of a full flow at trace level")
    func secretsNeverLogged() async throws {
        let db = try await TestDatabase.create("secretslog")
        try await db.prepareBilling(users: 1)
        let admin = try TallyBinary.run(
            ["admin", "create-user", "--username", "root-of-logs", "--root", "--json"], databaseURL: db.url)
        let adminToken = try #require(
            (try JSONSerialization.jsonObject(with: Data(admin.output.utf8)) as? [String: Any])?["access_token"]
                as? String)
        let gatewaySecret = "gw-secret-\(UInt64.random(in: 0...UInt64.max))"
        // The limit is the number of wrong client credentials below (the rotated-away token, the
        // 10 near misses off the gateway's routes, one more; the gateway's 5 count apart), so each
        // of them reaches its lookup (and whatever error path might echo it); only the request
        // after them is refused by the limiter.
        let nearMisses = 15, gatewayMisses = 5, failedAuthLimit = 1 + nearMisses - gatewayMisses + 1
        let server = try ServerProcess(
            databaseURL: db.url, gatewaySecret: gatewaySecret,
            arguments: ["--log-level", "trace", "--failed-auth-limit", "\(failedAuthLimit)"])
        var secrets = [adminToken, gatewaySecret, SyntheticKeys.key(forUser: 1)]
        func call(
            _ method: String, _ path: String, token: String? = nil,
            json: String? = nil
        ) async throws -> HTTP.Answer {
            var headers: [String: String] = [:]
            if let token { headers["Authorization"] = "Bearer \(token)" }
            if json != nil { headers["Content-Type"] = "application/json" }
            let body = json.map { Data($0.utf8) }
            return try await HTTP.sendAsync(method, "\(server.baseURL)/\(path)", headers: headers, body: body)
        }
        /// The call answered `status` (and, for a refusal, `code`), else the test fails with the answer.
        func expect(
            _ answer: HTTP.Answer, _ status: Int, _ code: String? = nil, _ what: String,
            sourceLocation: SourceLocation = #_sourceLocation
        ) {
            #expect(
                answer.status == status && (code == nil || EnvelopeError(answer.body)?.code == code),
                "\(what): \(answer.status) \(answer.text.prefix(300))", sourceLocation: sourceLocation)
        }
        do {
            // Rotating the access token makes the CLI-issued one invalid: both must stay out of the log.
            let rotated = try await call("POST", "api/user/token", token: adminToken)
            expect(rotated, 200, nil, "rotate the access token")
            let userToken = try #require(rotated.object["data"] as? String)
            secrets.append(userToken)
            let rotatedAway = try await call("GET", "api/user/self", token: adminToken)
            expect(rotatedAway, 401, "invalid_token", "the rotated-away token")
            expect(try await call("GET", "api/user/self", token: userToken), 200, nil, "the new access token")
            let created = try await call(
                "POST", "api/token/", token: userToken, json: #"{"name":"logged?","unlimited_quota":true}"#)
            expect(created, 200, nil, "create a key")
            let key = try #require((created.object["data"] as? [String: Any])?["key"] as? String)
            secrets.append(key)
            expect(try await call("GET", "v1/models", token: key), 200, nil, "models with the key")
            let subscription = try await call("GET", "v1/dashboard/billing/subscription", token: key)
            expect(subscription, 200, nil, "subscription with the key")
            let codes = try await call(
                "POST", "api/redemption/", token: userToken, json: #"{"name":"log","count":1,"quota":1000}"#)
            expect(codes, 200, nil, "create a redemption code")
            let code = try #require((codes.object["data"] as? [String])?.first)
            secrets.append(code)
            let topUp = try await call("POST", "api/user/topup", token: userToken, json: #"{"key":"\#(code)"}"#)
            expect(topUp, 200, nil, "redeem the code")
            #expect(topUp.object["success"] as? Bool == true, "\(topUp.text)")
            let line = LogLines.chat("logged-1").replacingOccurrences(of: SyntheticKeys.key(forUser: 1), with: key)
            expect(try await call("POST", "gateway/v1/logs", token: gatewaySecret, json: line), 200, nil, "ingest")
            // Wrong and near-miss credentials, which error paths might echo: each is looked up.
            let wrongs = [
                key + "x", String(key.dropLast()), userToken + "x", gatewaySecret + "x",
                "sk-" + String(repeating: "0", count: 48),
            ]
            #expect(wrongs.count * 3 == nearMisses && wrongs.count == gatewayMisses)
            for wrong in wrongs {
                let name = "…\(wrong.suffix(6))"
                expect(try await call("GET", "api/user/self", token: wrong), 401, "invalid_token", "self \(name)")
                expect(try await call("GET", "v1/models", token: wrong), 401, "invalid_token", "models \(name)")
                let gateway = try await call("POST", "gateway/v1/logs", token: wrong, json: line)
                expect(gateway, 401, "invalid_token", "gateway \(name)")
            }
            // The limiter's path with a credential in hand: the last failure allowed, then refused.
            let lastAllowed = try await call("GET", "api/user/self", token: key + "y")
            expect(lastAllowed, 401, "invalid_token", "the last allowed failure")
            let refused = try await call("GET", "api/user/self", token: userToken)
            expect(refused, 429, "too_many_failed_auth", "over the limit")
        } catch {
            server.stop()
            throw error
        }
        server.stop()
        let log = server.log()
        #expect(!log.isEmpty, "the trace-level log is empty, so the test proves nothing")
        for secret in secrets {
            let body = secret.hasPrefix("sk-") ? String(secret.dropFirst(3)) : secret
            #expect(!log.contains(body), "secret …\(secret.suffix(6)) is in the server log \(server.logURL.path)")
            #expect(
                !log.contains(SecretHash(of: secret).hex),
                "the hash of secret …\(secret.suffix(6)) is in the server log")
        }
    }
}
