import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// `tally import new-api` through the real binary, from a database built with new-api's schema
/// (Tests/Fixtures/new-api-schema.sql) on the test cluster.
@Suite("tally import new-api", .serialized)
struct NewAPIImportTests {
    static let aliceKey = "sk-AlicemainKeyffb26708407a53d05884215f7052a00b3ce9"
    static let aliceAccessToken = "aliceAccessToken+/=84e2b2184bcbf"

    /// A database holding new-api's tables and the fixture's rows.
    static func newAPIDatabase(_ name: String) async throws -> TestDatabase {
        let db = try await TestDatabase.create(name, poolSize: 2, migrate: false)
        let sql = try String(contentsOf: TestCluster.repositoryRoot.appendingPathComponent("Tests/Fixtures/new-api-schema.sql"),
                             encoding: .utf8)
        try await db.pool.withConnection { try $0.execute(sql) }
        return db
    }

    static func runImport(_ source: TestDatabase, into tally: TestDatabase, _ extra: [String] = []) throws -> String {
        let run = try TallyBinary.run(["import", "new-api", "--from", source.url, "--batch-size", "700", "--quiet"] + extra,
                                      databaseURL: tally.url)
        return run.output
    }

    /// A fingerprint of every table an import writes: equal fingerprints, nothing changed.
    static func fingerprint(_ db: TestDatabase) async throws -> [String: String] {
        let tables = ["users", "tokens", "channels", "groups", "redemptions", "ledger", "request_logs", "usage_daily",
                      "import_map", "import_sources", "audit_log", "ingest_batches"]
        return try await db.pool.withConnection { connection in
            var prints: [String: String] = [:]
            for table in tables {
                prints[table] = try connection.query("SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM \(table) t")[0].text(0)
            }
            return prints
        }
    }

    /// Per source user id: (balance, used quota, request count) in new-api and in Tally.
    static func accounts(_ source: TestDatabase, _ tally: TestDatabase) async throws -> [Int64: (source: [Int64], tally: [Int64])] {
        let expected = try await source.pool.withConnection { connection in
            try connection.query("""
                SELECT u.id, u.quota, coalesce(sum(l.quota), 0)::bigint, count(l.id)
                FROM users u LEFT JOIN logs l ON l.user_id = u.id AND l.type IN (2, 5) GROUP BY u.id
                """).map { (try $0.decode(0, as: Int64.self), [try $0.decode(1, as: Int64.self), try $0.decode(2), try $0.decode(3)]) }
        }
        let actual = try await tally.pool.withConnection { connection in
            try connection.query("""
                SELECT m.source_id, u.quota, u.used_quota, u.request_count FROM import_map m JOIN users u ON u.id = m.tally_id
                WHERE m.source = 'new-api' AND m.kind = 'user'
                """).map { (try $0.decode(0, as: Int64.self), [try $0.decode(1, as: Int64.self), try $0.decode(2), try $0.decode(3)]) }
        }
        let tallyByID = Dictionary(uniqueKeysWithValues: actual)
        return Dictionary(uniqueKeysWithValues: expected.map { ($0.0, ($0.1, tallyByID[$0.0] ?? [])) })
    }

    @Test("imports users, keys, groups, channels, codes, logs and balances; a second run changes nothing; keys work; audit is clean")
    func importTwice() async throws {
        let source = try await Self.newAPIDatabase("newapisrc")
        let tally = try await TestDatabase.create("newapiimport")
        // Accounts made in Tally before the import: "root" is new-api's root too (linked), and
        // "ops" holds id 2, alice's id in new-api (so alice gets another id).
        let root = try TallyBinary.run(["admin", "create-user", "--username", "root", "--root", "--json"], databaseURL: tally.url)
        let rootToken = try #require(try JSONSerialization.jsonObject(with: Data(root.output.utf8)) as? [String: Any])["access_token"] as? String
        try TallyBinary.run(["admin", "create-user", "--username", "ops", "--admin"], databaseURL: tally.url)

        let first = try Self.runImport(source, into: tally)
        #expect(first.contains("users: 5 created, "), "\(first)")
        #expect(first.contains("1 linked"))
        #expect(first.contains("keys: 8 created, 0 updated, 0 linked, 1 skipped"))
        #expect(first.contains("channels: 3 created"))
        #expect(first.contains("redemption codes: 2 created, 0 updated, 0 linked, 1 skipped"))
        #expect(first.contains("logs: 3005 read, 3004 imported, 0 already there, 1 skipped"))
        #expect(first.contains("default=1, svip=0.8, vip=1.5"))
        // new-api's counters include usage whose logs were trimmed; Tally's are the logs'.
        #expect(first.contains("used_quota: new-api 7928757, imported logs 7304459"))
        #expect(first.contains("user dave: group \"企业\""))

        // Ids are kept where free; the rows say what new-api said.
        let seed = Seed(db: tally)
        #expect(try await seed.int("SELECT tally_id FROM import_map WHERE kind = 'user' AND source_id = 1") == 1)
        let alice = try await seed.int("SELECT tally_id FROM import_map WHERE kind = 'user' AND source_id = 2")
        #expect(alice > 7)
        for id in [3, 4, 5, 7] as [Int64] {
            #expect(try await seed.int("SELECT tally_id FROM import_map WHERE kind = 'user' AND source_id = $1", [id]) == id)
        }
        #expect(try await seed.sql(#"SELECT "group", role, status FROM users WHERE username = 'dave'"#)[0].text(0) == "default")
        #expect(try await seed.int("SELECT role FROM users WHERE username = 'dave'") == 10)
        #expect(try await seed.int("SELECT count(*) FROM users WHERE username IN ('bob', 'carol') AND status = 2") == 2)
        #expect(try await seed.int("SELECT count(*) FROM groups WHERE (name, selectable, description) IN (('vip', true, 'vip分组'), ('svip', false, ''))") == 2)
        #expect(try await seed.int("SELECT count(*) FROM groups WHERE name = 'auto'") == 0)
        let erinKey = try await seed.sql(#"SELECT name, "group" FROM tokens WHERE id = 7"#)[0]
        #expect(erinKey.text(0).map { $0.utf8.count <= 50 && $0.hasPrefix("这是一个") } == true)
        #expect(erinKey.text(1) == "")
        #expect(try await seed.int("SELECT count(*) FROM tokens WHERE id = 6 AND deleted_at IS NOT NULL") == 1)
        #expect(try await seed.sql("SELECT model_limits, allow_ips FROM tokens WHERE id = 3")[0].text(0) == "gpt-4o,claude-sonnet-4")
        #expect(try await seed.int("SELECT count(*) FROM tokens WHERE key_hash = sha256(convert_to('sk-OrphanKey88f6811ab5d8fc6d3177f9b7609ae0fcebfda18', 'UTF8'))") == 0)
        #expect(try await seed.sql("SELECT name, groups::text FROM channels WHERE id = 5")[0].text(0) == "channel 5")
        #expect(try await seed.sql("SELECT groups::text FROM channels WHERE id = 1")[0].text(0) == "{default,vip}")
        #expect(try await seed.int("SELECT status FROM channels WHERE id = 2") == 3)
        #expect(try await seed.int("SELECT count(*) FROM redemptions WHERE status = 3 AND used_user_id = $1", [alice]) == 1)

        // Logs: every request and error of a known user, charged, rolled up, partitioned by month.
        #expect(try await seed.int("SELECT count(*) FROM request_logs") == 3004)
        #expect(try await seed.int("SELECT count(*) FROM request_logs WHERE status = 429 AND quota = 0") == 60)
        #expect(try await seed.int("SELECT count(*) FROM request_logs WHERE request_id = 'new-api:3007' AND token_id = 6") == 1)
        #expect(try await seed.int("SELECT count(*) FROM request_logs WHERE request_id = 'new-api:3005' AND token_id = 0 AND quota = -500") == 1)
        #expect(try await seed.int("SELECT count(*) FROM pg_class WHERE relname = 'request_logs_y2026m07'") == 1)
        #expect(try await seed.int("SELECT sum(quota) FROM usage_daily") == (try await seed.int("SELECT sum(quota) FROM request_logs")))
        #expect(try await seed.int("SELECT sum(cached_tokens) FROM request_logs") > 0)

        // Balances are new-api's; used quota and request counts are those of the imported logs.
        for (id, figures) in try await Self.accounts(source, tally) {
            #expect(figures.source == figures.tally, "new-api user \(id)")
        }
        #expect(try await seed.int("SELECT remain_quota FROM tokens WHERE id = 3") == 300_000)
        try TallyBinary.run(["audit"], databaseURL: tally.url)

        // Run again: nothing at all changes.
        let before = try await Self.fingerprint(tally)
        let second = try Self.runImport(source, into: tally)
        #expect(second.contains("nothing to change"), "\(second)")
        #expect(second.contains("logs: 3005 read, 0 imported, 3004 already there, 1 skipped"))
        #expect(try await Self.fingerprint(tally) == before)

        // new-api's keys and access tokens work in Tally.
        try await TestApp.build(tally).test(.live) { client in
            let api = API(client: client)
            let subscription = try await api.get("/v1/dashboard/billing/subscription", token: Self.aliceKey)
            #expect(subscription.status == 200, "\(subscription.text)")
            let limit = try await seed.int("SELECT remain_quota + used_quota FROM tokens WHERE id = 2")
            #expect(double(subscription.object["hard_limit_usd"]) == Double(limit) / 500_000)
            let vip = try await api.get("/v1/dashboard/billing/subscription", token: "sk-AlicevipKey020ab0179bc2b00c038a792b9170ec2b0caf0")
            #expect(int64(vip.object["access_until"]) == 4_102_444_800)
            for refused in ["sk-BobKey81b637d8fcd2c6da6359e6963113a1170de795e4b7",      // disabled
                            "sk-AliceoldKey29fa3b51d5defc882e409fa33b9feca5dd13f",      // deleted
                            "sk-OrphanKey88f6811ab5d8fc6d3177f9b7609ae0fcebfda18"] {    // owner gone
                #expect(try await api.get("/v1/dashboard/billing/subscription", token: refused).status == 401)
            }
            let me = try await api.get("/api/user/self", token: Self.aliceAccessToken, headers: [.newAPIUser: "\(alice)"])
            #expect(me.status == 200, "\(me.text)")
            #expect(me.dataObject["username"] as? String == "alice")
            #expect(int64(me.dataObject["quota"]) == 2_500_000)
            let rootSelf = try await api.get("/api/user/self", token: rootToken)
            #expect(rootSelf.dataObject["username"] as? String == "root")
            // An unused new-api code redeems once.
            let redeemed = try await api.post("/api/user/topup", token: Self.aliceAccessToken, #"{"key":"40be4e59b9a2a2b5dffb918c0e86b3d7"}"#)
            #expect(int64(redeemed.data) == 500_000, "\(redeemed.text)")
        }
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    @Test("a re-run after new-api moved on copies only what is new, and balances follow new-api")
    func rerunAfterChanges() async throws {
        let source = try await Self.newAPIDatabase("newapimoved")
        let tally = try await TestDatabase.create("newapimovedtally")
        _ = try Self.runImport(source, into: tally)
        try await source.pool.withConnection { connection in
            try connection.execute("""
                INSERT INTO users (id, username, password, quota, "group", created_at) VALUES (8, 'frank', 'x', 42000, 'vip', 1790000000);
                INSERT INTO tokens (id, user_id, key, name, remain_quota, unlimited_quota) VALUES
                    (10, 8, 'FrankKey000000000000000000000000000000000000001', 'frank', 5000, false);
                UPDATE users SET quota = 123456, display_name = 'Alice B.' WHERE id = 2;
                UPDATE tokens SET status = 2 WHERE id = 2;
                UPDATE redemptions SET status = 3, used_user_id = 8, redeemed_time = 1790000000 WHERE id = 1;
                INSERT INTO logs (id, user_id, created_at, type, model_name, quota, prompt_tokens, completion_tokens, token_id, channel_id, "group", other)
                SELECT 3008 + g, CASE WHEN g % 2 = 0 THEN 2 ELSE 8 END, 1793500000 + g, 2, 'gpt-4o', 100 * g, 10, 10,
                       CASE WHEN g % 2 = 0 THEN 2 ELSE 10 END, 1, 'vip', '{}'
                FROM generate_series(1, 10) AS g;
                """)
        }
        let second = try Self.runImport(source, into: tally)
        #expect(second.contains("users: 1 created, 1 updated"), "\(second)")
        #expect(second.contains("keys: 1 created, 1 updated"))
        #expect(second.contains("redemption codes: 0 created, 1 updated"))
        #expect(second.contains(" 10 imported, "))
        #expect(second.contains("balances: 2 adjustment(s)"))
        for (id, figures) in try await Self.accounts(source, tally) {
            #expect(figures.source == figures.tally, "new-api user \(id)")
        }
        let seed = Seed(db: tally)
        #expect(try await seed.int("SELECT count(*) FROM ledger WHERE kind = 'adjust' AND user_id = 8 AND idempotency_key LIKE '%:opening'") == 1)
        #expect(try await seed.int("SELECT status FROM tokens WHERE id = 2") == 2)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
        #expect(try Self.runImport(source, into: tally).contains("nothing to change"))
    }

    @Test("an older new-api schema (no log request id or ip, no user created_at, no code expiry) imports too")
    func olderSchema() async throws {
        let source = try await Self.newAPIDatabase("newapiold")
        try await source.pool.withConnection { connection in
            try connection.execute("""
                ALTER TABLE logs DROP COLUMN ip, DROP COLUMN request_id, DROP COLUMN upstream_request_id;
                ALTER TABLE users DROP COLUMN created_at, DROP COLUMN remark, DROP COLUMN stripe_customer;
                ALTER TABLE redemptions DROP COLUMN expired_time;
                DROP TABLE options;
                """)
        }
        let tally = try await TestDatabase.create("newapioldtally")
        let output = try Self.runImport(source, into: tally, ["--json"])
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
        #expect((summary["logs"] as? [String: Any]).flatMap { int64($0["imported"]) } == 3004)
        #expect((summary["users"] as? [String: Any]).flatMap { int64($0["created"]) } == 6)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    @Test("a database that is not new-api's is refused before anything is written")
    func notNewAPI() async throws {
        let other = try await TestDatabase.create("notnewapi")
        let tally = try await TestDatabase.create("notnewapitally")
        try TallyBinary.run(["import", "new-api", "--from", other.url, "--quiet"], databaseURL: tally.url,
                            expecting: .failure)
        #expect(try await tally.scalar("SELECT count(*) FROM users") == 0)
    }
}
