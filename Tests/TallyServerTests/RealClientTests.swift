import Foundation
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// The Python of ops/venv's environment (LiteLLM, the openai SDK), set by
/// `ops/slow-tests/real-clients`; without it the suite is skipped.
let clientPython = ProcessInfo.processInfo.environment["TALLY_CLIENT_PYTHON"]

/// Client software nobody here wrote, against a real `tally serve` on a fresh database with the
/// default price sheet: LiteLLM 1.110.2's generic_api logger and the official openai SDK
/// (drivers in Tests/RealClients/). Only from `ops/slow-tests/real-clients` (ops/test --slow).
@Suite("real clients: LiteLLM and the openai SDK", .serialized, .enabled(if: clientPython != nil))
struct RealClientTests {
    static let initialQuota: Int64 = 1_000_000_000
    static let clients = TestCluster.repositoryRoot.appendingPathComponent("Tests/RealClients")

    /// A fresh database, the default price sheet, one user with `keys` (name → model limit, ""
    /// for none), a channel offering `channelModels`, and a server.
    struct Account {
        let db: TestDatabase
        let server: ServerProcess
        let userID: Int64
        let keys: [String: String]

        init(keys: [String: String], channelModels: String = "gpt-4o") async throws {
            db = try await TestDatabase.create("clients")
            let sheet = TestCluster.repositoryRoot.appendingPathComponent("ops/prices/default.yaml").path
            try Self.tally(["prices", "load", sheet], db)
            let user = try Self.tally(
                [
                    "admin", "create-user", "--username", "client", "--quota",
                    String(RealClientTests.initialQuota), "--json",
                ], db)
            userID = try #require(user["id"] as? Int64 ?? (user["id"] as? Int).map(Int64.init))
            var created: [String: String] = [:]
            for (name, models) in keys {
                let limit = models.isEmpty ? [] : ["--models", models]
                let arguments = [
                    "admin", "create-key", "--user", String(userID), "--name", name, "--unlimited",
                    "--json",
                ]
                let key = try Self.tally(arguments + limit, db)
                created[name] = try #require(key["key"] as? String)
            }
            self.keys = created
            try Self.tally(["admin", "channel", "add", "--name", "upstream", "--models", channelModels, "--json"], db)
            server = try ServerProcess(databaseURL: db.url, gatewaySecret: "real-clients-secret")
        }

        /// `tally ARGS… --json` against the database, its one JSON object.
        @discardableResult
        static func tally(_ arguments: [String], _ db: TestDatabase) throws -> [String: Any] {
            let result = try TallyBinary.run(arguments, databaseURL: db.url)
            #expect(result.status == 0, "tally \(arguments.joined(separator: " ")): \(result.output)")
            let line = result.output.split(separator: "\n").last { $0.hasPrefix("{") } ?? "{}"
            return (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? [:]
        }

        /// `tally quote --json` for gpt-4o-style usage, in units.
        func quote(
            _ model: String, prompt: Int, completion: Int, cached: Int = 0, cacheWrite: Int = 0,
            failed: Bool = false
        ) throws -> Int64 {
            let arguments = [
                "quote", "--model", model, "--prompt-tokens", "\(prompt)",
                "--completion-tokens", "\(completion)", "--cached-tokens", "\(cached)",
                "--cache-write-tokens", "\(cacheWrite)", "--json",
            ]
            let answer = try Self.tally(arguments + (failed ? ["--failed"] : []), db)
            return try #require((answer["units"] as? NSNumber)?.int64Value)
        }

        func stop() async {
            server.stop()
            await db.pool.close()
        }
    }

    /// Runs a driver of Tests/RealClients with the venv's Python; its one JSON object.
    static func drive(_ script: String, _ arguments: [String]) throws -> [String: Any] {
        let python = URL(fileURLWithPath: try #require(clientPython))
        let outcome = try ChildProcess.run(
            python, [clients.appendingPathComponent(script).path] + arguments,
            captureErrors: true)
        #expect(outcome.status == 0, "\(script) exited \(outcome.status):\n\(outcome.errors.suffix(4000))")
        let line = outcome.output.split(separator: "\n").last { $0.hasPrefix("{") } ?? "{}"
        let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        let problem = "\(script) printed no JSON object: \(outcome.output)\n\(outcome.errors.suffix(4000))"
        return try #require(object, "\(problem)")
    }

    /// What a stored request log says about a call.
    struct Row: Equatable {
        var model: String
        var status = 200
        var quota: Int64
        var cached: Int64 = 0
        var cacheWrite: Int64 = 0
        var error: String?
    }

    static func row(_ db: TestDatabase, _ requestID: String) async throws -> Row? {
        try await db.pool.withConnection { connection in
            let rows = try connection.query(
                """
                SELECT model, status, quota, cached_tokens, cache_write_tokens, error
                FROM request_logs WHERE request_id = $1
                """, [requestID])
            guard let row = rows.first else { return nil }
            return Row(
                model: try row.decode(0, as: String.self), status: Int(try row.decode(1, as: Int32.self)),
                quota: try row.decode(2, as: Int64.self), cached: try row.decode(3, as: Int64.self),
                cacheWrite: try row.decode(4, as: Int64.self), error: try row.decodeOptional(5, as: String.self))
        }
    }

    @Test(
        "LiteLLM's generic_api logger: priced by model_group, cached tokens at the cached price, the 429 free",
        arguments: ["json_array", "ndjson", "single"])
    func liteLLM(logFormat: String) async throws {
        let account = try await Account(keys: ["litellm": ""])
        let key = try #require(account.keys["litellm"])
        let prefix = "litellm-\(logFormat)"
        let result = try Self.drive(
            "litellm_client.py",
            [
                "--tally", account.server.baseURL, "--secret", account.server.gatewaySecret,
                "--key-hash", SecretHash(of: key).hex, "--prefix", prefix, "--log-format", logFormat,
            ] + (logFormat == "ndjson" ? ["--redact-messages"] : []))
        #expect(result["queued"] as? Int == 4)
        let posts = result["posts"] as? [[String: Any]] ?? []
        #expect(posts.count == (logFormat == "single" ? 4 : 1))
        var accepted = 0
        for post in posts {
            #expect(post["status"] as? Int == 200, "\(post)")
            let text = Data((post["body"] as? String ?? "").utf8)
            let body = (try? JSONSerialization.jsonObject(with: text)) as? [String: Any]
            accepted += body?["accepted"] as? Int ?? 0
            #expect((body?["rejected"] as? [Any])?.isEmpty == true, "\(post)")
        }
        #expect(accepted == 4)

        let plain = try await Self.row(account.db, "\(prefix)-plain")
        #expect(plain == Row(model: "gpt-4o", quota: try account.quote("gpt-4o", prompt: 1000, completion: 500)))
        let cachedQuote = try account.quote("gpt-4o", prompt: 2000, completion: 100, cached: 1500)
        #expect(cachedQuote < (try account.quote("gpt-4o", prompt: 2000, completion: 100)))
        let cached = try await Self.row(account.db, "\(prefix)-cached")
        #expect(cached == Row(model: "gpt-4o", quota: cachedQuote, cached: 1500))
        let anthropicQuote = try account.quote(
            "claude-sonnet-4", prompt: 3000, completion: 200, cached: 1000,
            cacheWrite: 500)
        let anthropic = try await Self.row(account.db, "\(prefix)-anthropic")
        #expect(anthropic == Row(model: "claude-sonnet-4", quota: anthropicQuote, cached: 1000, cacheWrite: 500))
        let failed = try await Self.row(account.db, "\(prefix)-failed")
        #expect(failed == Row(model: "gpt-4o", status: 429, quota: 0, error: "provider_rate_limited"))

        #expect(try await account.db.scalar("SELECT count(*) FROM ingest_rejects") == 0)
        let charged = [plain, cached, anthropic].compactMap { $0?.quota }.reduce(0, +)
        #expect(
            try await account.db.scalar("SELECT quota FROM users WHERE id = $1", [account.userID])
                == Self.initialQuota - charged)
        let audit = try TallyBinary.run(["audit"], databaseURL: account.db.url)
        #expect(audit.status == 0, "\(audit.output)")
        await account.stop()
    }

    @Test("openai SDK: models.list() gives exactly the key's models; a bad key: AuthenticationError, catalog message")
    func openAIModels() async throws {
        // The channel also offers a model the price sheet does not price: no key may see it.
        let account = try await Account(
            keys: ["all": "", "limited": "gpt-4o,claude-sonnet-4"],
            channelModels: "gpt-4o,gpt-4o-mini,claude-sonnet-4,not-priced-model")
        let all = try #require(account.keys["all"])
        let limited = try #require(account.keys["limited"])
        let result = try Self.drive(
            "openai_models.py",
            [
                "--base-url", account.server.baseURL + "/v1", "--key", all, "--key", limited,
                "--bad-key", "sk-" + String(repeating: "0", count: 48),
            ])
        let models = result["models"] as? [String: [String]] ?? [:]
        #expect(Set(models[all] ?? []) == ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"])
        #expect(models[all]?.count == 3)
        #expect(models[limited]?.sorted() == ["claude-sonnet-4", "gpt-4o"])
        let error = result["bad_key"] as? [String: Any] ?? [:]
        #expect(error["class"] as? String == "AuthenticationError", "\(error)")
        #expect(error["status"] as? Int == 401)
        #expect(error["message"] as? String == CatalogEntry.invalidToken.message(), "\(error)")
        print("openai SDK \(result["sdk"] ?? "?"): \(models.count) keys listed, bad key: \(error["text"] ?? "")")
        await account.stop()
    }
}
