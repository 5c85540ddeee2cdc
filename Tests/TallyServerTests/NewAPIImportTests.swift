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
        let sql = try String(
            contentsOf: TestCluster.repositoryRoot.appendingPathComponent("Tests/Fixtures/new-api-schema.sql"),
            encoding: .utf8)
        try await db.pool.withConnection { try $0.execute(sql) }
        return db
    }

    /// The Tally id of new-api's `kind` row `id` (source `new-api`).
    static func tallyID(_ kind: String, source id: Int64, in tally: TestDatabase) async throws -> Int64 {
        try await tally.scalar(
            "SELECT tally_id FROM import_map WHERE kind = $1 AND source_id = $2 AND source = 'new-api'", [kind, id])
    }

    static func runImport(_ source: TestDatabase, into tally: TestDatabase, _ extra: [String] = []) throws -> String {
        let run = try TallyBinary.run(
            ["import", "new-api", "--from", source.url, "--batch-size", "700", "--quiet"] + extra,
            databaseURL: tally.url)
        return run.output
    }

    /// A fingerprint of every table an import writes: equal fingerprints, nothing changed.
    static func fingerprint(_ db: TestDatabase) async throws -> [String: String] {
        let tables = [
            "users", "tokens", "channels", "groups", "redemptions", "ledger", "request_logs", "usage_daily",
            "import_map", "import_sources", "audit_log", "ingest_batches",
        ]
        return try await db.pool.withConnection { connection in
            var prints: [String: String] = [:]
            for table in tables {
                prints[table] = try connection.query(
                    "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM \(table) t"
                )[0].text(0)
            }
            return prints
        }
    }

    /// Per source user id: (balance, used quota, request count) in new-api and in Tally.
    static func accounts(_ source: TestDatabase, _ tally: TestDatabase) async throws -> [Int64: (
        source: [Int64], tally: [Int64]
    )] {
        let expected = try await source.pool.withConnection { connection in
            try connection.query(
                """
                SELECT u.id, u.quota, coalesce(sum(l.quota), 0)::bigint, count(l.id)
                FROM users u LEFT JOIN logs l ON l.user_id = u.id AND l.type IN (2, 5) GROUP BY u.id
                """
            ).map {
                (
                    try $0.decode(0, as: Int64.self),
                    [try $0.decode(1, as: Int64.self), try $0.decode(2), try $0.decode(3)]
                )
            }
        }
        let actual = try await tally.pool.withConnection { connection in
            try connection.query(
                """
                SELECT m.source_id, u.quota, u.used_quota, u.request_count FROM import_map m JOIN users u ON u.id = m.tally_id
                WHERE m.source = 'new-api' AND m.kind = 'user'
                """
            ).map {
                (
                    try $0.decode(0, as: Int64.self),
                    [try $0.decode(1, as: Int64.self), try $0.decode(2), try $0.decode(3)]
                )
            }
        }
        let tallyByID = Dictionary(uniqueKeysWithValues: actual)
        return Dictionary(uniqueKeysWithValues: expected.map { ($0.0, ($0.1, tallyByID[$0.0] ?? [])) })
    }

    @Test(
        "imports users, keys, groups, channels, codes, logs and balances; a second run changes nothing; keys work; audit is clean"
    )
    func importTwice() async throws {
        let source = try await Self.newAPIDatabase("newapisrc")
        let tally = try await TestDatabase.create("newapiimport")
        // Accounts made in Tally before the import: "root" is new-api's root too (linked), and
        // "ops" holds id 2, alice's id in new-api (so alice gets another id).
        let root = try TallyBinary.run(
            ["admin", "create-user", "--username", "root", "--root", "--json"], databaseURL: tally.url)
        let rootToken =
            try #require(try JSONSerialization.jsonObject(with: Data(root.output.utf8)) as? [String: Any])[
                "access_token"] as? String
        try TallyBinary.run(["admin", "create-user", "--username", "ops", "--admin"], databaseURL: tally.url)

        let first = try Self.runImport(source, into: tally)
        #expect(first.contains("users: 5 created, "), "\(first)")
        #expect(first.contains("1 linked"))
        #expect(first.contains("keys: 8 created, 0 updated, 0 linked, 0 renamed, 0 removed, 1 skipped"))
        #expect(first.contains("channels: 3 created"))
        #expect(first.contains("redemption codes: 2 created, 0 updated, 0 linked, 0 renamed, 0 removed, 1 skipped"))
        #expect(first.contains("logs: 3005 read, 3004 imported, 0 already there, 1 skipped"))
        #expect(first.contains("default=1, svip=0.8, vip=1.5"))
        // new-api's counters include usage whose logs were trimmed; Tally's are the logs'.
        #expect(first.contains("used_quota: new-api 7928757, imported logs 7304459"))
        #expect(first.contains("user dave: group \"企业\""))
        #expect(
            first.contains(
                "warning: group \"企业\" skipped: not a valid Tally group name ([A-Za-z0-9_.-]{1,64}); "
                    + "named by 1 user(s)"))

        // Ids are kept where free; the rows say what new-api said.
        let seed = Seed(db: tally)
        // An opening adjustment comes before the imported charges: the balance after it is its own
        // amount, not new-api's balance after them (found by a review of the import).
        let openings = "SELECT count(*) FROM ledger WHERE idempotency_key LIKE '%:opening'"
        #expect(try await seed.int(openings + " AND balance_after = amount") > 0)
        #expect(try await seed.int(openings + " AND balance_after IS DISTINCT FROM amount") == 0)
        #expect(
            try await seed.int(
                "SELECT count(*) FROM ledger l JOIN users u ON u.id = l.user_id "
                    + "WHERE l.idempotency_key LIKE '%:opening' AND l.amount <> u.quota") > 0,
            "some opening is followed by charges")
        #expect(try await seed.int("SELECT tally_id FROM import_map WHERE kind = 'user' AND source_id = 1") == 1)
        let alice = try await seed.int("SELECT tally_id FROM import_map WHERE kind = 'user' AND source_id = 2")
        #expect(alice > 7)
        for id in [3, 4, 5, 7] as [Int64] {
            #expect(
                try await seed.int("SELECT tally_id FROM import_map WHERE kind = 'user' AND source_id = $1", [id]) == id
            )
        }
        #expect(
            try await seed.sql(#"SELECT "group", role, status FROM users WHERE username = 'dave'"#)[0].text(0)
                == "default")
        #expect(try await seed.int("SELECT role FROM users WHERE username = 'dave'") == 10)
        #expect(try await seed.int("SELECT count(*) FROM users WHERE username IN ('bob', 'carol') AND status = 2") == 2)
        #expect(
            try await seed.int(
                "SELECT count(*) FROM groups WHERE (name, selectable, description) IN (('vip', true, 'vip分组'), ('svip', false, ''))"
            ) == 2)
        #expect(try await seed.int("SELECT count(*) FROM groups WHERE name = 'auto'") == 0)
        let erinKey = try await seed.sql(#"SELECT name, "group" FROM tokens WHERE id = 7"#)[0]
        #expect(erinKey.text(0).map { $0.utf8.count <= 50 && $0.hasPrefix("这是一个") } == true)
        #expect(erinKey.text(1) == "")
        #expect(try await seed.int("SELECT count(*) FROM tokens WHERE id = 6 AND deleted_at IS NOT NULL") == 1)
        let vipKey = try await seed.sql(
            "SELECT model_limits, allow_ips, extract(epoch FROM expires_at)::bigint FROM tokens WHERE id = 3")[0]
        #expect(vipKey.text(0) == "gpt-4o,claude-sonnet-4")
        #expect(vipKey.text(1) == "10.0.0.0/8\n192.168.1.1")
        #expect(try vipKey.decode(2, as: Int64.self) == 4_102_444_800)
        #expect(
            try await seed.int(
                "SELECT count(*) FROM tokens WHERE key_hash = sha256(convert_to('sk-OrphanKey88f6811ab5d8fc6d3177f9b7609ae0fcebfda18', 'UTF8'))"
            ) == 0)
        #expect(try await seed.sql("SELECT name, groups::text FROM channels WHERE id = 5")[0].text(0) == "channel 5")
        #expect(try await seed.sql("SELECT groups::text FROM channels WHERE id = 1")[0].text(0) == "{default,vip}")
        #expect(try await seed.int("SELECT status FROM channels WHERE id = 2") == 3)
        #expect(
            try await seed.int("SELECT count(*) FROM redemptions WHERE status = 3 AND used_user_id = $1", [alice]) == 1)

        // Logs: every request and error of a known user, charged, rolled up, partitioned by month.
        #expect(try await seed.int("SELECT count(*) FROM request_logs") == 3004)
        #expect(try await seed.int("SELECT count(*) FROM request_logs WHERE status = 429 AND quota = 0") == 60)
        #expect(
            try await seed.int("SELECT count(*) FROM request_logs WHERE request_id = 'new-api:3007' AND token_id = 6")
                == 1)
        #expect(
            try await seed.int(
                "SELECT count(*) FROM request_logs WHERE request_id = 'new-api:3005' AND token_id = 0 AND quota = -500")
                == 1)
        #expect(try await seed.int("SELECT count(*) FROM pg_class WHERE relname = 'request_logs_y2026m07'") == 1)
        #expect(
            try await seed.int("SELECT sum(quota) FROM usage_daily")
                == (try await seed.int("SELECT sum(quota) FROM request_logs")))
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
            // alice-vip's allow-list (10.0.0.0/8, 192.168.1.1) came along: this client is 127.0.0.1.
            let vip = try await api.get(
                "/v1/dashboard/billing/subscription", token: "sk-AlicevipKey020ab0179bc2b00c038a792b9170ec2b0caf0")
            #expect(vip.status == 403 && vip.errorCode == "ip_not_allowed", "\(vip.text)")
            for refused in [
                "sk-BobKey81b637d8fcd2c6da6359e6963113a1170de795e4b7",  // disabled
                "sk-AliceoldKey29fa3b51d5defc882e409fa33b9feca5dd13f",  // deleted
                "sk-OrphanKey88f6811ab5d8fc6d3177f9b7609ae0fcebfda18",
            ] {  // owner gone
                #expect(try await api.get("/v1/dashboard/billing/subscription", token: refused).status == 401)
            }
            let me = try await api.get(
                "/api/user/self", token: Self.aliceAccessToken, headers: [.newAPIUser: "\(alice)"])
            #expect(me.status == 200, "\(me.text)")
            #expect(me.dataObject["username"] as? String == "alice")
            #expect(int64(me.dataObject["quota"]) == 2_500_000)
            let rootSelf = try await api.get("/api/user/self", token: rootToken)
            #expect(rootSelf.dataObject["username"] as? String == "root")
            // An unused new-api code redeems once.
            let redeemed = try await api.post(
                "/api/user/topup", token: Self.aliceAccessToken, #"{"key":"40be4e59b9a2a2b5dffb918c0e86b3d7"}"#)
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
            try connection.execute(
                """
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
        #expect(
            try await seed.int(
                "SELECT count(*) FROM ledger WHERE kind = 'adjust' AND user_id = 8 AND idempotency_key LIKE '%:opening'"
            ) == 1)
        #expect(try await seed.int("SELECT status FROM tokens WHERE id = 2") == 2)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
        #expect(try Self.runImport(source, into: tally).contains("nothing to change"))
    }

    /// Found by a review of lock orders: the accounts' table lock (SHARE ROW EXCLUSIVE) let a
    /// top-up or an admin change lock an account's row first; the import then waited for that
    /// row while the change's UPDATE waited for the table, and PostgreSQL aborted one of them.
    @Test("a change that locked an account's row before the import finishes first; neither is aborted")
    func rowLockedBeforeTheImport() async throws {
        let source = try await Self.newAPIDatabase("newapirowlock")
        let tally = try await TestDatabase.create("newapirowlocktally")
        _ = try Self.runImport(source, into: tally)
        try await source.pool.withConnection {
            try $0.execute("UPDATE users SET display_name = 'Alice B.' WHERE id = 2")
        }
        let alice = try await Self.tallyID("user", source: 2, in: tally)
        // A top-up's transaction, as AccountRepository.lock starts it; its deadlock timeout the
        // longer, so that PostgreSQL would abort the import.
        let change = try await TestSession.open(tally.url)
        try await change.run { connection in
            try connection.execute("BEGIN")
            try connection.execute("SET LOCAL deadlock_timeout = '60s'")
            try connection.query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", [alice])
        }
        let importing = Task.detached { try Self.runImport(source, into: tally) }
        #expect(
            try await waitUntil(timeout: .seconds(30)) {
                try await tally.scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                    == 1
            }, "the import never waited for the change")
        try await change.run { connection in
            try connection.query("UPDATE users SET quota = quota + 1000, updated_at = now() WHERE id = $1", [alice])
            try connection.execute("COMMIT")
        }
        #expect(try await importing.value.contains("users: 0 created, 1 updated"))
        let seed = Seed(db: tally)
        #expect(
            try await seed.int("SELECT count(*) FROM users WHERE id = $1 AND display_name = 'Alice B.'", [alice]) == 1)
    }

    /// Found by a review: a re-run folded new-api's newer logs against the balance of the last
    /// run, and queued balance.low for a user it then set to new-api's higher balance.
    @Test("an import queues no balance events: its charges were spent in new-api, and the balance follows new-api")
    func noBalanceEvents() async throws {
        let source = try await Self.newAPIDatabase("newapievents")
        let tally = try await TestDatabase.create("newapieventstally")
        _ = try Self.runImport(source, into: tally)
        let alice = try await Self.tallyID("user", source: 2, in: tally)
        let balance: Int64 = try await tally.scalar("SELECT quota FROM users WHERE id = $1", [alice])
        _ = try await WebhookRepository(pool: tally.pool).add(
            url: "http://127.0.0.1:9/hook", secret: nil, events: [], by: .cli)
        let seed = Seed(db: tally)
        // A charge of the next run takes alice's balance across her threshold, before the run
        // sets it to new-api's, a million higher.
        try await seed.sql("UPDATE users SET low_balance_threshold = $2 WHERE id = $1", [alice, balance - 1])
        try await source.pool.withConnection { connection in
            try connection.execute(
                """
                UPDATE users SET quota = quota + 1000000 WHERE id = 2;
                INSERT INTO logs (id, user_id, created_at, type, model_name, quota, prompt_tokens, completion_tokens,
                                  token_id, channel_id, "group", other)
                VALUES (3100, 2, 1793500000, 2, 'gpt-4o', 5000, 10, 10, 2, 1, 'vip', '{}');
                """)
        }
        let second = try Self.runImport(source, into: tally)
        #expect(second.contains(" 1 imported, "), "\(second)")
        #expect(try await seed.int("SELECT count(*) FROM webhook_outbox") == 0)
        #expect(try await tally.scalar("SELECT quota FROM users WHERE id = $1", [alice]) == balance + 1_000_000)
    }

    /// new-api moving on before the cut-over: what `followsNewAPI` changes in the source.
    static let newAPIMovesOn = """
        -- alice rotates her access token (new-api pads it to char(32)), is renamed, and her balance changes;
        -- a new user registers "alice".
        UPDATE users SET access_token = 'aliceRotated7c1f2e9a', username = 'alice-b', quota = 3000000 WHERE id = 2;
        INSERT INTO users (id, username, password, display_name, quota, "group", access_token, created_at) VALUES
            (9, 'alice', 'x', 'New Alice', 50000, 'default', 'newAliceAccessTokenc0ffee1234567', 1790000000);
        INSERT INTO tokens (id, user_id, key, name, remain_quota, unlimited_quota, created_time) VALUES
            (10, 9, 'NewAliceKey0000000000000000000000000000000000001', 'new-alice', 40000, false, 1790000000);
        -- root (linked to Tally's own root) rotates too, and gets a top-up.
        UPDATE users SET access_token = 'rootRotated0b5e4d3c2a1f0e9d8c7b6', quota = quota + 777777 WHERE id = 1;
        -- erin takes the name of an account Tally made itself.
        UPDATE users SET username = 'ops', display_name = 'Erin O.' WHERE id = 7;
        -- bob and carol swap names (new-api's unique index needs three steps; the import needs one run),
        -- and someone registers a name longer than Tally allows.
        UPDATE users SET username = 'swapping' WHERE id = 3;
        UPDATE users SET username = 'bob' WHERE id = 4;
        UPDATE users SET username = 'carol' WHERE id = 3;
        INSERT INTO users (id, username, password, quota, created_at) VALUES (11, repeat('l', 70), 'x', 0, 1790000200);
        -- dave is deleted for good (with his keys) and the name is registered again.
        DELETE FROM tokens WHERE user_id = 5;
        DELETE FROM users WHERE id = 5;
        INSERT INTO users (id, username, password, quota, "group", created_at)
            VALUES (10, 'dave', 'x', 0, 'vip', 1790000100);
        -- keys: alice-vip deleted, erin's removed for good, alice-main changed in every field.
        UPDATE tokens SET deleted_at = '2026-11-01 00:00:00+00' WHERE id = 3;
        DELETE FROM tokens WHERE id = 7;
        UPDATE tokens SET name = 'alice-main-2', remain_quota = 654321, allow_ips = '192.0.2.0/24', "group" = 'svip',
                          model_limits_enabled = true, model_limits = 'gpt-4o', expired_time = 4102444800
        WHERE id = 2;
        -- a group Tally cannot hold, only in GroupRatio; new logs, one in a group Tally cannot hold.
        UPDATE options SET value = '{"default":1,"vip":1.5,"svip":0.8,"bad group":2}' WHERE key = 'GroupRatio';
        INSERT INTO logs (id, user_id, created_at, type, model_name, quota, prompt_tokens, completion_tokens, token_id,
                          channel_id, "group", other)
        VALUES (3009, 9, 1793500000, 2, 'gpt-4o', 1234, 10, 10, 10, 1, 'default', '{}'),
               (3010, 2, 1793500100, 2, 'gpt-4o', 4321, 10, 10, 2, 1, '企业', '{}');
        """

    @Test("a re-run follows new-api: rotated tokens, renames, a reused name, deleted keys and users, balances, logs")
    func followsNewAPI() async throws {
        let source = try await Self.newAPIDatabase("newapifollow")
        let tally = try await TestDatabase.create("newapifollowtally")
        let root = try TallyBinary.run(
            ["admin", "create-user", "--username", "root", "--root", "--json"],
            databaseURL: tally.url)
        let rootJSON = try #require(try JSONSerialization.jsonObject(with: Data(root.output.utf8)) as? [String: Any])
        let rootToken = try #require(rootJSON["access_token"] as? String)
        try TallyBinary.run(["admin", "create-user", "--username", "ops", "--admin"], databaseURL: tally.url)
        _ = try Self.runImport(source, into: tally)
        let seed = Seed(db: tally)
        let alice = try await seed.int("SELECT tally_id FROM import_map WHERE kind = 'user' AND source_id = 2")

        try await source.pool.withConnection { try $0.execute(Self.newAPIMovesOn) }
        let second = try Self.runImport(source, into: tally)
        #expect(second.contains("users: 3 created, 1 updated, 0 linked, 5 renamed, 1 removed, 0 skipped"), "\(second)")
        #expect(second.contains("access tokens replaced: 1"))
        #expect(second.contains("keys: 1 created, 2 updated, 0 linked, 0 renamed, 2 removed, 1 skipped"))
        for warning in [
            "user #7 (erin): \"ops\" is held by another Tally account; named \"ops~7\"",
            "user #5 (dave): new-api no longer has the account and another new-api user has its name; named \"dave~5\"",
            "user dave~5: gone from new-api's users table; disabled",
            "user #11: new-api's name is too long for Tally; named \"\(String(repeating: "l", count: 61))~11\"",
            "group \"bad group\" skipped: not a valid Tally group name ([A-Za-z0-9_.-]{1,64}); named by GroupRatio",
            "logs: group \"企业\" is not a Tally group; 1 log(s) read carry their account's group instead",
        ] {
            #expect(second.contains("warning: \(warning)\n"), "\(warning)")
        }

        // Accounts: ids kept, names follow new-api, conflicts suffixed.
        let names = try await seed.sql(
            """
            SELECT m.source_id, u.username, u.status, u.display_name FROM import_map m JOIN users u ON u.id = m.tally_id
            WHERE m.kind = 'user' ORDER BY m.source_id
            """
        ).map { row in
            (try row.decode(0, as: Int64.self), row.text(1) ?? "", try row.decode(2, as: Int64.self), row.text(3) ?? "")
        }
        let byID = Dictionary(uniqueKeysWithValues: names.map { ($0.0, $0) })
        #expect(byID[2]?.1 == "alice-b")
        #expect(try await seed.int("SELECT tally_id FROM import_map WHERE kind = 'user' AND source_id = 2") == alice)
        #expect(byID[9]?.1 == "alice" && byID[9]?.3 == "New Alice")
        #expect(byID[7]?.1 == "ops~7" && byID[7]?.3 == "Erin O.")
        #expect(byID[5]?.1 == "dave~5" && byID[5]?.2 == 2)
        #expect(byID[10]?.1 == "dave" && byID[10]?.2 == 1)
        #expect(byID[3]?.1 == "carol" && byID[3]?.3 == "Bob" && byID[4]?.1 == "bob" && byID[4]?.3 == "Carol")
        #expect(try await seed.sql("SELECT role FROM users WHERE username = 'ops'")[0].text(0) == "10")

        // Keys follow new-api field by field; deleted ones are deleted.
        let main = try await seed.sql(
            """
            SELECT name, allow_ips, model_limits_enabled, model_limits, "group", extract(epoch FROM expires_at)::bigint,
                   remain_quota
            FROM tokens WHERE id = 2
            """)[0]
        #expect(main.text(0) == "alice-main-2" && main.text(1) == "192.0.2.0/24")
        #expect(main.text(3) == "gpt-4o" && main.text(4) == "svip")
        #expect(try main.decode(2, as: Bool.self))
        #expect(try main.decode(5, as: Int64.self) == 4_102_444_800 && main.decode(6, as: Int64.self) == 654_321)
        #expect(try await seed.int("SELECT count(*) FROM tokens WHERE id IN (3, 7, 9) AND deleted_at IS NOT NULL") == 3)

        // Logs: the new ones are in, in the group their account ends up in when new-api's cannot be held.
        let log3010 = try await seed.sql(#"SELECT "group" FROM request_logs WHERE request_id = 'new-api:3010'"#)[0]
        #expect(log3010.text(0) == "vip")
        #expect(
            try await seed.int(
                """
                SELECT count(*) FROM request_logs WHERE request_id = 'new-api:3009'
                   AND user_id = (SELECT tally_id FROM import_map WHERE kind = 'user' AND source_id = 9)
                """) == 1)

        // Balances are new-api's, through ledger adjustments dated now.
        for (id, figures) in try await Self.accounts(source, tally) {
            #expect(figures.source == figures.tally, "new-api user \(id)")
        }
        #expect(
            try await seed.int(
                """
                SELECT count(*) FROM ledger
                WHERE kind = 'adjust' AND user_id IN (1, $1) AND idempotency_key NOT LIKE '%:opening'
                """, [alice]) == 2)
        try TallyBinary.run(["audit"], databaseURL: tally.url)

        // Credentials, through a real server (127.0.0.1 is the trusted proxy, X-Forwarded-For the client).
        let server = try ServerProcess(databaseURL: tally.url, arguments: ["--trusted-proxies", "127.0.0.1"])
        defer { server.stop() }
        func get(_ path: String, _ credential: String, from client: String? = nil) async throws -> HTTP.Answer {
            var headers = ["Authorization": "Bearer \(credential)"]
            if let client { headers["X-Forwarded-For"] = client }
            return try await HTTP.sendAsync("GET", server.baseURL + path, headers: headers)
        }
        func username(_ answer: HTTP.Answer) -> String? {
            (answer.object["data"] as? [String: Any])?["username"] as? String
        }
        #expect(try await get("/api/user/self", Self.aliceAccessToken).status == 401)
        #expect(username(try await get("/api/user/self", "aliceRotated7c1f2e9a")) == "alice-b")
        #expect(username(try await get("/api/user/self", "newAliceAccessTokenc0ffee1234567")) == "alice")
        #expect(username(try await get("/api/user/self", rootToken)) == "root")
        for refused in ["rootRotated0b5e4d3c2a1f0e9d8c7b6", "rootAccessToken63a9f0ea7bb980507"] {
            #expect(try await get("/api/user/self", refused).status == 401)
        }
        let billing = "/v1/dashboard/billing/subscription"
        #expect(try await get(billing, Self.aliceKey, from: "192.0.2.10").status == 200)
        let outside = try await get(billing, Self.aliceKey, from: "198.51.100.1")
        #expect(outside.status == 403)
        #expect((outside.object["error"] as? [String: Any])?["code"] as? String == "ip_not_allowed")
        #expect(try await get(billing, "sk-NewAliceKey0000000000000000000000000000000000001").status == 200)
        for deleted in [
            "sk-AlicevipKey020ab0179bc2b00c038a792b9170ec2b0caf0",
            "sk-ErinKey7cbccb0c4caadf9fcdb51ee457a828cc72a458798",
        ] {
            #expect(try await get(billing, deleted, from: "10.0.0.1").status == 401)
        }

        // Once more: nothing changes, the suffixed names included.
        let before = try await Self.fingerprint(tally)
        let third = try Self.runImport(source, into: tally)
        #expect(third.contains("nothing to change"), "\(third)")
        #expect(try await Self.fingerprint(tally) == before)
    }

    @Test("--logs-from reads the logs from new-api's own log database (LOG_SQL_DSN)")
    func separateLogDatabase() async throws {
        let main = try await Self.newAPIDatabase("newapimaindb")
        let logs = try await Self.newAPIDatabase("newapilogdb")
        try await main.pool.withConnection { try $0.execute("DROP TABLE logs") }
        try await logs.pool.withConnection {
            try $0.execute("DROP TABLE users, tokens, channels, redemptions, options")
        }
        let tally = try await TestDatabase.create("newapisplittally")
        let refused = try TallyBinary.run(
            ["import", "new-api", "--from", main.url, "--quiet"], databaseURL: tally.url,
            expecting: .failure)
        #expect(refused.errorOutput.contains("--logs-from"), "\(refused.errorOutput)")
        #expect(try await tally.scalar("SELECT count(*) FROM users") == 0)

        let first = try Self.runImport(main, into: tally, ["--logs-from", logs.url])
        #expect(first.contains("logs: 3005 read, 3004 imported, 0 already there, 1 skipped"), "\(first)")
        let logQuota = try await logs.scalar("SELECT sum(quota) FROM logs WHERE type IN (2, 5) AND user_id <> 99")
        #expect(try await tally.scalar("SELECT sum(quota) FROM request_logs") == logQuota)
        try await logs.pool.withConnection { connection in
            try connection.execute(
                """
                INSERT INTO logs (id, user_id, created_at, type, model_name, quota, token_id, channel_id, "group",
                                  other)
                VALUES (3009, 2, 1793500000, 2, 'gpt-4o', 1000, 2, 1, 'vip', '{}'),
                       (3010, 7, 1793500100, 2, 'gpt-4o', 2000, 7, 1, 'svip', '{}');
                """)
        }
        let second = try Self.runImport(main, into: tally, ["--logs-from", logs.url])
        #expect(second.contains(" 2 imported, "), "\(second)")
        #expect(try await tally.scalar("SELECT sum(quota) FROM request_logs") == logQuota + 3000)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    @Test("an older new-api schema (no log request id or ip, no user created_at, no code expiry) imports too")
    func olderSchema() async throws {
        let source = try await Self.newAPIDatabase("newapiold")
        try await source.pool.withConnection { connection in
            try connection.execute(
                """
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

    /// Found by a review of the import: both came over silently wrong.
    @Test(
        """
        a key new-api holds expired (expired_time 0, as its API stores a key made without one) comes in expired; \
        a QuotaPerUnit other than 500000 is refused before anything is written
        """)
    func expiryAndQuotaUnit() async throws {
        let source = try await Self.newAPIDatabase("newapiexpiry")
        // And a user whose username is NULL (new-api's column allows it): skipped, not the whole import.
        try await source.pool.withConnection {
            try $0.execute(
                "UPDATE tokens SET expired_time = 0 WHERE id = 2; UPDATE users SET username = NULL WHERE id = 4")
        }
        let tally = try await TestDatabase.create("newapiexpirytally")
        _ = try Self.runImport(source, into: tally)
        #expect(
            try await tally.scalar(
                "SELECT count(*) FROM tokens WHERE id = 2 AND expires_at = to_timestamp(0) AND expires_at < now()") == 1
        )
        #expect(try await tally.scalar("SELECT count(*) FROM tokens WHERE id = 1 AND expires_at IS NULL") == 1)
        #expect(try await tally.scalar("SELECT count(*) FROM users WHERE username = 'carol'") == 0)

        let scaled = try await Self.newAPIDatabase("newapiunit")
        try await scaled.pool.withConnection {
            try $0.execute("UPDATE options SET value = '1000000' WHERE key = 'QuotaPerUnit'")
        }
        let untouched = try await TestDatabase.create("newapiunittally")
        let refused = try TallyBinary.run(
            ["import", "new-api", "--from", scaled.url, "--quiet"], databaseURL: untouched.url, expecting: .failure)
        #expect(refused.errorOutput.contains("QuotaPerUnit is 1000000, not 500000"), "\(refused.errorOutput)")
        #expect(try await untouched.scalar("SELECT count(*) FROM users") == 0)
    }

    /// Found by a review of the import: the dropped month's partition was made again and its logs
    /// charged a second time.
    @Test("--all-logs after retention dropped a month leaves that month's logs out: nothing is charged twice")
    func allLogsAfterRetention() async throws {
        let source = try await Self.newAPIDatabase("newapiretention")
        let tally = try await TestDatabase.create("newapiretentiontally")
        _ = try Self.runImport(source, into: tally)
        let september =
            "SELECT coalesce(sum(amount), 0) FROM ledger WHERE kind = 'charge' AND at >= '2026-09-01' AND at < '2026-10-01'"
        let charged = try await tally.scalar(september)
        let usedQuota = try await tally.scalar("SELECT sum(used_quota) FROM users")
        #expect(charged != 0)
        let retention = LogRetention(pool: tally.pool)
        let plan = try await retention.plan(keepMonths: 2, current: UsageMonth("2026-11")!)
        #expect(try await retention.apply(plan, by: .cli).map(\.month).contains(UsageMonth("2026-09")!))
        let output = try Self.runImport(source, into: tally, ["--all-logs", "--json"])
        #expect(try await tally.scalar(september) == charged)
        #expect(try await tally.scalar("SELECT sum(used_quota) FROM users") == usedQuota)
        #expect(output.contains("retention dropped"), "\(output)")
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    /// Found by a review: an account whose first run needed no adjustment got its first one on a
    /// later run as its "opening", backdated before its first ledger row — into months whose
    /// statements had been issued, changing them after the fact.
    /// new-api with one more user at a balance of 0 and no logs, imported once: the user has no
    /// ledger row in Tally. Returns the source, Tally's database and the user's Tally id.
    static func importedAtZero(_ name: String, id: Int64, username: String) async throws -> (
        source: TestDatabase, tally: TestDatabase, user: Int64
    ) {
        let source = try await newAPIDatabase(name + "src")
        _ = try await source.pool.withConnection {
            try $0.query(
                "INSERT INTO users (id, username, password, quota, created_at) VALUES ($1, $2, 'x', 0, 1785000000)",
                [id, username])
        }
        let tally = try await TestDatabase.create(name)
        _ = try runImport(source, into: tally)
        let user = try await tallyID("user", source: id, in: tally)
        #expect(try await tally.scalar("SELECT count(*) FROM ledger WHERE user_id = $1", [user]) == 0)
        return (source, tally, user)
    }

    @Test("an account's first adjustment on a later run, after the books have rows of it, is dated now")
    func laterAdjustmentDatedNow() async throws {
        let (source, tally, gina) = try await Self.importedAtZero("newapilateadj", id: 12, username: "gina")
        try TallyBinary.run(
            ["admin", "topup", "--user", "\(gina)", "--amount", "5000", "--idempotency-key", "gina-1"],
            databaseURL: tally.url)
        try await source.pool.withConnection { try $0.execute("UPDATE users SET quota = 70000 WHERE id = 12") }
        _ = try Self.runImport(source, into: tally)
        #expect(try await tally.scalar("SELECT quota FROM users WHERE id = $1", [gina]) == 70000)
        let recent = "at > now() - interval '1 hour' AND idempotency_key NOT LIKE '%:opening'"
        #expect(
            try await tally.scalar(
                "SELECT count(*) FROM ledger WHERE user_id = $1 AND kind = 'adjust' AND amount = 65000 AND \(recent)",
                [gina]) == 1)
        #expect(
            try await tally.scalar(
                "SELECT count(*) FROM ledger WHERE user_id = $1 AND at < now() - interval '1 hour'", [gina]) == 0)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    /// Found by a review of the import: an account with a balance of 0 and no logs at its first
    /// run got no ledger row, so the next run took its adjustment for the opening balance and
    /// dated it before the account's first row, changing the statements of months already issued.
    @Test("an account whose balance a run has set gets later adjustments dated now, even with no ledger row from then")
    func zeroBalanceThenLogs() async throws {
        let (source, tally, hank) = try await Self.importedAtZero("newapizero", id: 13, username: "hank")
        // new-api tops hank up and he spends some of it.
        try await source.pool.withConnection {
            try $0.execute("UPDATE users SET quota = 70000 WHERE id = 13")
            try $0.execute(
                """
                INSERT INTO logs (id, user_id, created_at, type, model_name, quota, prompt_tokens, completion_tokens,
                                  token_id, channel_id, "group", other)
                VALUES (4100, 13, extract(epoch FROM now())::bigint - 60, 2, 'gpt-4o', 3000, 10, 10, 0, 1, 'default', '{}')
                """)
        }
        _ = try Self.runImport(source, into: tally)
        #expect(try await tally.scalar("SELECT quota FROM users WHERE id = $1", [hank]) == 70000)
        #expect(
            try await tally.scalar(
                "SELECT count(*) FROM ledger WHERE user_id = $1 AND kind = 'adjust' AND at > now() - interval '1 hour'",
                [hank]) == 1)
        #expect(
            try await tally.scalar(
                "SELECT count(*) FROM ledger WHERE user_id = $1 AND at < now() - interval '1 hour'", [hank]) == 0)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    /// Found by a review: an account whose kept logs add up below 0 (the charge a re-charge
    /// refunds deleted by new-api's log cleanup) failed the used_quota check in the fold, so the
    /// balance step failed on every run.
    @Test("an account whose kept logs add up below 0 imports, and audits clean")
    func negativeLogTotal() async throws {
        let source = try await Self.newAPIDatabase("newapinegsrc")
        try await source.pool.withConnection {
            try $0.execute(
                """
                INSERT INTO logs (id, user_id, created_at, type, model_name, quota, prompt_tokens, completion_tokens,
                                  token_id, channel_id, "group", other)
                VALUES (4000, 5, 1793500000, 2, 'gpt-4o', -2000, 0, 0, 0, 1, 'default', '{}')
                """)
        }
        let tally = try await TestDatabase.create("newapineg")
        _ = try Self.runImport(source, into: tally)
        let dave = try await Self.tallyID("user", source: 5, in: tally)
        #expect(try await tally.scalar("SELECT used_quota FROM users WHERE id = $1", [dave]) == -2000)
        #expect(try await tally.scalar("SELECT quota FROM users WHERE id = $1", [dave]) == -5000)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    /// Found by a review: a channel whose groups Tally cannot hold was given `default`, and so
    /// served every default-group user the models only `企业` had.
    @Test(
        "a channel none of whose groups Tally can hold comes in disabled; a key expiring past year 9999 never expires")
    func channelWithoutValidGroups() async throws {
        let source = try await Self.newAPIDatabase("newapichansrc")
        try await source.pool.withConnection {
            try $0.execute(
                """
                INSERT INTO channels (id, type, key, status, name, created_time, models, "group", used_quota)
                VALUES (9, 1, 'sk-upstream-secret-9', 1, 'private', 1780000000, 'gpt-4o', '企业', 0);
                -- Found by the same review: an expiry past year 9999 aborted every run.
                UPDATE tokens SET expired_time = 99999999999999 WHERE id = 1;
                """)
        }
        let tally = try await TestDatabase.create("newapichan")
        let output = try Self.runImport(source, into: tally)
        #expect(output.contains("channel #9: none of its groups is a valid Tally group name"), "\(output)")
        let channel = try await Self.tallyID("channel", source: 9, in: tally)
        #expect(try await tally.scalar("SELECT status FROM channels WHERE id = $1", [channel]) == 2)
        let key = try await Self.tallyID("token", source: 1, in: tally)
        #expect(try await tally.scalar("SELECT count(*) FROM tokens WHERE id = $1 AND expires_at IS NULL", [key]) == 1)
    }

    /// Found by a review: a later run linked a new-api user to the Tally account holding its name
    /// (made in Tally meanwhile, an admin's), whose balance and role then followed new-api's.
    @Test("a later run links no Tally account by name: a new-api user whose name one holds comes in suffixed")
    func laterRunLinksNoOne() async throws {
        let source = try await Self.newAPIDatabase("newapilinksrc")
        let tally = try await TestDatabase.create("newapilink")
        _ = try Self.runImport(source, into: tally)
        let support = try TallyBinary.createUser("support", ["--admin"], databaseURL: tally.url)
        try await source.pool.withConnection {
            try $0.execute(
                "INSERT INTO users (id, username, password, quota, created_at) VALUES (14, 'support', 'x', 999000, 1790000000)"
            )
        }
        let output = try Self.runImport(source, into: tally)
        #expect(output.contains("is an existing Tally account's"), "\(output)")
        #expect(try await tally.scalar("SELECT quota FROM users WHERE id = $1", [support]) == 0)
        #expect(try await tally.scalar("SELECT role FROM users WHERE id = $1", [support]) == 10)
        let imported = try await Self.tallyID("user", source: 14, in: tally)
        #expect(imported != support)
        #expect(try await tally.scalar("SELECT quota FROM users WHERE id = $1", [imported]) == 999_000)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    /// Found by a review of the import: keys were linked by hash alone, so a second source's
    /// copy of a key (a cloned new-api imported under another name) was linked to the first
    /// source's account, followed both sources, and was charged the other account's logs.
    @Test("a second source's copies of keys are not linked to the first source's accounts: skipped, with a warning")
    func keysOfAnotherSource() async throws {
        let source = try await Self.newAPIDatabase("newapiclonesrc")
        let tally = try await TestDatabase.create("newapiclone")
        _ = try Self.runImport(source, into: tally)
        let owners = "SELECT string_agg(id || ':' || user_id, ',' ORDER BY id) FROM tokens"
        let before = try await tally.pool.withConnection { try $0.query(owners)[0].text(0) }
        let clone = try Self.runImport(source, into: tally, ["--source", "clone"])
        #expect(
            clone.contains("key(s) skipped: the same key is another Tally account's, or another source's"), "\(clone)")
        // Its users' access tokens are the first source's users' too: they come in without them
        // (a token held twice failed the whole run with 23505).
        #expect(clone.contains("new-api's access token is held by another Tally account"))
        #expect(
            try await tally.scalar(
                "SELECT count(*) FROM users WHERE access_token_hash IS NOT NULL GROUP BY access_token_hash ORDER BY 1 DESC LIMIT 1"
            ) == 1)
        #expect(
            try await tally.scalar("SELECT count(*) FROM import_map WHERE source = 'clone' AND kind = 'token'") == 0)
        #expect(try await tally.pool.withConnection { try $0.query(owners)[0].text(0) } == before)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    /// Found by a review of the import: a rotation new-api made (after a leak, say) that Tally
    /// could not follow, its new value being another account's, left the old token and key
    /// working until a later run could rotate them.
    @Test(
        "a rotation blocked by another source's account revokes the old token and disables the old key until it can happen"
    )
    func blockedRotationsFailClosed() async throws {
        let source = try await Self.newAPIDatabase("newapirotsrc")
        let other = try await Self.newAPIDatabase("newapirotother")
        let tally = try await TestDatabase.create("newapirot")
        let (token, key) = ("bobOtherToken5d1c0e9f8a7b6c5d4e3", "BobOtherKey0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c")
        try await other.pool.withConnection {
            try $0.execute("UPDATE users SET access_token = '\(token)' WHERE id = 3")
            try $0.execute("UPDATE tokens SET key = '\(key)' WHERE id = 4")
        }
        _ = try Self.runImport(source, into: tally)
        _ = try Self.runImport(other, into: tally, ["--source", "other"])
        let alice = try await Self.tallyID("user", source: 2, in: tally)
        let aliceMain = try await Self.tallyID("token", source: 2, in: tally)
        let keyBefore = try await tally.pool.withConnection {
            try $0.query("SELECT key_hash FROM tokens WHERE id = $1", [aliceMain])[0].text(0)
        }
        // new-api rotates alice's token and key, to values the other source's bob holds in Tally.
        try await source.pool.withConnection {
            try $0.execute("UPDATE users SET access_token = '\(token)' WHERE id = 2")
            try $0.execute("UPDATE tokens SET key = '\(key)' WHERE id = 2")
        }
        let blocked = try Self.runImport(source, into: tally)
        #expect(blocked.contains("the account's old token is revoked and it has none until a later run"), "\(blocked)")
        #expect(
            blocked.contains("1 key(s) not rotated: new-api's new key is another Tally key's; the old key is disabled"))
        #expect(
            try await tally.scalar("SELECT count(*) FROM users WHERE id = $1 AND access_token_hash IS NULL", [alice])
                == 1)
        let keyRow = "SELECT status || ':' || key_hash FROM tokens WHERE id = $1"
        #expect(
            try await tally.pool.withConnection { try $0.query(keyRow, [aliceMain])[0].text(0) }
                == "2:\(keyBefore ?? "")")

        // The other source lets go of them: the next run rotates both, and the key works again.
        try await other.pool.withConnection {
            try $0.execute("UPDATE users SET access_token = 'bobFreshToken00aa11bb22cc33dd44e' WHERE id = 3")
            try $0.execute("UPDATE tokens SET key = 'BobFreshKey00aa11bb22cc33dd44ee55ff66778899aabbc' WHERE id = 4")
        }
        _ = try Self.runImport(other, into: tally, ["--source", "other"])
        let freed = try Self.runImport(source, into: tally)
        #expect(!freed.contains("not rotated"), "\(freed)")
        #expect(
            try await tally.scalar(
                "SELECT count(*) FROM users WHERE id = $1 AND access_token_hash IS NOT NULL", [alice])
                == 1)
        let rotated = try await tally.pool.withConnection { try $0.query(keyRow, [aliceMain])[0].text(0) }
        #expect(rotated?.hasPrefix("1:") == true && rotated != "1:\(keyBefore ?? "")", "\(rotated ?? "")")
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    /// Found by a review: codes new-api had stopped came in disabled with no record of who
    /// stopped them, so their maker, an admin, could enable them again (the rule that lets only
    /// whoever stopped a code, or root, enable it found no stop to go by).
    @Test("a code new-api stopped, imported or stopped since, cannot be enabled again by its admin maker")
    func stoppedCodesStayRoots() async throws {
        let source = try await Self.newAPIDatabase("newapicodessrc")
        let tally = try await TestDatabase.create("newapicodes")
        try await source.pool.withConnection { connection in
            try connection.execute(
                """
                INSERT INTO redemptions (id, user_id, key, status, name, quota, created_time, redeemed_time, used_user_id, expired_time) VALUES
                    (4, 5, 'c0de4dave0000000000000000000000a', 2, 'leaked', 100000, 1780000000, 0, 0, 0),
                    (5, 5, 'c0de5dave0000000000000000000000b', 1, 'later', 100000, 1780000000, 0, 0, 0)
                """)
        }
        _ = try Self.runImport(source, into: tally)
        // new-api stops the second batch after the first run.
        try await source.pool.withConnection { try $0.execute("UPDATE redemptions SET status = 2 WHERE id = 5") }
        let second = try Self.runImport(source, into: tally)
        #expect(second.contains("redemption codes: 0 created, 1 updated"), "\(second)")
        let dave = try await Self.tallyID("user", source: 5, in: tally)
        let balances = BalanceRepository(pool: tally.pool)
        for name in ["leaked", "later"] {
            let id = try await tally.scalar(
                "SELECT id FROM redemptions WHERE name = $1 AND created_by = $2", [name, dave])
            await #expect(throws: PermissionDenied.self, "\(name)") {
                _ = try await balances.setRedemptionStatus(
                    id: id, enabled: true, by: Actor(userID: dave, name: "dave", tid: nil))
            }
            #expect(try await tally.scalar("SELECT status FROM redemptions WHERE id = $1", [id]) == 2)
        }
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    /// Found by a review of the import: a row whose new-api id Tally had taken got the source's
    /// highest id + 1, the id new-api gave its next row, which the following run displaced in
    /// turn; a gateway line naming that row's id was charged to the displaced one's owner.
    @Test(
        "a displaced row, and every row Tally makes after an import, take ids new-api never reaches; the run lists them"
    )
    func displacedIDsOutOfReach() async throws {
        let source = try await Self.newAPIDatabase("newapiidsrc")
        // No channels in new-api: the run inserts none, and channels made in Tally after it must
        // still take ids new-api never gives (from the review of the fix: it moved a sequence only
        // when the run inserted into that table).
        try await source.pool.withConnection { try $0.execute("DELETE FROM channels") }
        let tally = try await TestDatabase.create("newapiids")
        _ = try TallyBinary.createUser("first", databaseURL: tally.url)
        let ops = try TallyBinary.createUser("ops", databaseURL: tally.url)
        #expect(ops == 2, "holds alice's new-api id")
        let first = try Self.runImport(source, into: tally)
        let alice = try await Self.tallyID("user", source: 2, in: tally)
        #expect(alice > 1_000_000_000)
        // root's id 1 is "first"'s, alice's 2 is "ops"'.
        #expect(
            first.contains(
                "2 users row(s) of new-api got another id, theirs being taken in Tally: 1 → 1000000001, 2 → \(alice)"),
            "\(first)")
        let made = try TallyBinary.createUser("made-in-tally", databaseURL: tally.url)
        #expect(made > alice)
        let channel = try await ChannelRepository(pool: tally.pool).create(ChannelDraft(name: "made here"), by: .cli)
        #expect(channel.id > 1_000_000_000)
        // new-api's next user takes the id after its highest, and keeps it in Tally.
        try await source.pool.withConnection {
            try $0.execute(
                "INSERT INTO users (id, username, password, quota, created_at) VALUES (8, 'frank', 'x', 0, 1790000000)")
        }
        let second = try Self.runImport(source, into: tally)
        #expect(!second.contains("got another id"), "\(second)")
        #expect(try await Self.tallyID("user", source: 8, in: tally) == 8)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    /// Found by a review of the import: codes were matched by hash alone, so a code deleted
    /// outright in new-api (a release without soft deletes, a cleanup in SQL) stayed redeemable.
    @Test(
        "a code deleted outright in new-api is disabled by the next run, root's stop on record; a used one stays used")
    func vanishedCodesDisabled() async throws {
        let source = try await Self.newAPIDatabase("newapigonesrc")
        let other = try await Self.newAPIDatabase("newapigoneother")
        let tally = try await TestDatabase.create("newapigone")
        _ = try Self.runImport(source, into: tally)
        let welcome = try await tally.scalar("SELECT id FROM redemptions WHERE name = 'welcome'")
        #expect(try await tally.scalar("SELECT status FROM redemptions WHERE id = $1", [welcome]) == 1)
        // Codes that are not this source's: one made in Tally, and another source's whose new-api
        // has no codes table at all (nothing staged: none of its codes may look gone).
        _ = try await BalanceRepository(pool: tally.pool).createRedemptions(
            name: "made here", count: 1, quota: 1_000, expiredTime: 0, by: .cli)
        try await other.pool.withConnection {
            try $0.execute("UPDATE redemptions SET key = 'ffff' || substr(key, 5)")
        }
        _ = try Self.runImport(other, into: tally, ["--source", "other"])
        let others =
            "SELECT count(*) FROM redemptions r JOIN import_map m ON m.tally_id = r.id AND m.kind = 'redemption' WHERE m.source = 'other' AND r.status = 1"
        #expect(try await tally.scalar(others) == 1)
        try await other.pool.withConnection { try $0.execute("DROP TABLE redemptions") }
        _ = try Self.runImport(other, into: tally, ["--source", "other"])
        #expect(try await tally.scalar(others) == 1)
        // As before migration 0039, when the import kept no record of its codes: a run links them.
        let mapped = "SELECT count(*) FROM import_map WHERE source = 'new-api' AND kind = 'redemption'"
        #expect(try await tally.scalar(mapped) == 2)
        try await tally.pool.withConnection {
            try $0.execute("DELETE FROM import_map WHERE source = 'new-api' AND kind = 'redemption'")
        }
        _ = try Self.runImport(source, into: tally)
        #expect(try await tally.scalar(mapped) == 2)
        try await source.pool.withConnection { try $0.execute("DELETE FROM redemptions WHERE id IN (1, 2)") }
        let second = try Self.runImport(source, into: tally)
        #expect(second.contains("redemption codes: 0 created, 0 updated, 0 linked, 0 renamed, 1 removed"), "\(second)")
        #expect(second.contains("1 redemption code(s) disabled: gone from new-api's redemptions table"))
        #expect(try await tally.scalar("SELECT status FROM redemptions WHERE id = $1", [welcome]) == 2)
        #expect(try await tally.scalar("SELECT status FROM redemptions WHERE name = 'used'") == 3)
        #expect(
            try await tally.scalar(
                "SELECT count(*) FROM audit_log WHERE action = 'redemption.disable' AND target = 'redemption:' || $1::text",
                [welcome]) == 1)
        let third = try Self.runImport(source, into: tally)
        #expect(third.contains("redemption codes: 0 created, 0 updated, 0 linked, 0 renamed, 0 removed"), "\(third)")
        #expect(try await tally.scalar(others) == 1)
        #expect(try await tally.scalar("SELECT status FROM redemptions WHERE name = 'made here'") == 1)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    /// Found by a review: a key whose allow-list Tally could not read came in disabled with an
    /// empty list, which allows every address, so enabling it (its owner may) lifted the list.
    @Test("a key whose allow-list cannot be read keeps it, and allows no address even once enabled")
    func unreadableAllowListKept() async throws {
        let source = try await Self.newAPIDatabase("newapiipsrc")
        let tally = try await TestDatabase.create("newapiip")
        try await source.pool.withConnection {
            try $0.execute("UPDATE tokens SET allow_ips = '10.0.0.0/33' WHERE id = 2")
        }
        let output = try Self.runImport(source, into: tally)
        #expect(output.contains("allow_ips unreadable"), "\(output)")
        let token = try await Self.tallyID("token", source: 2, in: tally)
        let stored = try await tally.pool.withConnection { connection in
            try connection.query("SELECT status, allow_ips FROM tokens WHERE id = $1", [token]).map {
                (try $0.decode(0, as: Int.self), try $0.decode(1, as: String.self))
            }[0]
        }
        #expect(stored.0 == TokenStatus.disabled.rawValue && stored.1 == "10.0.0.0/33")
        // Its owner enables it: it is still refused from any address.
        try await tally.pool.withConnection { try $0.execute("UPDATE tokens SET status = 1 WHERE id = \(token)") }
        try await TestApp.build(tally).test(.live) { client in
            let refused = try await API(client: client).get("/v1/dashboard/billing/subscription", token: Self.aliceKey)
            #expect(refused.status == 403 && refused.errorCode == "ip_not_allowed", "\(refused.text)")
        }
    }

    /// Found by a review: the run's audit row was written after its last transaction, outside
    /// them all, so a run that died midway left its committed account changes unrecorded.
    @Test("a run that fails after its accounts committed leaves their audit row; money's row commits with the money")
    func auditRowsWithTheirChanges() async throws {
        let source = try await Self.newAPIDatabase("newapiauditsrc")
        let tally = try await TestDatabase.create("newapiaudit")
        try await tally.pool.withConnection { connection in
            try connection.execute(
                """
                CREATE FUNCTION refuse_logs() RETURNS trigger LANGUAGE plpgsql
                AS $$ BEGIN RAISE EXCEPTION 'request rows refused by the test'; END $$
                """)
            try connection.execute(
                "CREATE TRIGGER refuse_logs BEFORE INSERT ON request_logs FOR EACH ROW EXECUTE FUNCTION refuse_logs()")
        }
        let failed = try TallyBinary.run(
            ["import", "new-api", "--from", source.url, "--quiet"], databaseURL: tally.url, expecting: .failure)
        #expect(failed.errorOutput.contains("request rows refused by the test"), "\(failed.errorOutput)")
        let audited = "SELECT count(*) FROM audit_log WHERE action = $1 AND actor = 'cli' AND tid IS NOT NULL"
        #expect(try await tally.scalar("SELECT count(*) FROM users") > 0)
        #expect(try await tally.scalar(audited, ["import.new-api.accounts"]) == 1)
        #expect(try await tally.scalar(audited, ["import.new-api.money"]) == 0)

        try await tally.pool.withConnection { try $0.execute("DROP TRIGGER refuse_logs ON request_logs") }
        _ = try Self.runImport(source, into: tally)
        #expect(try await tally.scalar(audited, ["import.new-api.accounts"]) == 1)
        #expect(try await tally.scalar(audited, ["import.new-api.money"]) == 1)
        // The money's row carries the tid of the ledger rows it describes.
        #expect(
            try await tally.scalar(
                """
                SELECT count(DISTINCT l.tid) FROM ledger l JOIN audit_log a ON a.tid = l.tid
                WHERE a.action = 'import.new-api.money'
                """) == 1)
        try TallyBinary.run(["audit"], databaseURL: tally.url)
    }

    @Test("a database that is not new-api's is refused before anything is written")
    func notNewAPI() async throws {
        let other = try await TestDatabase.create("notnewapi")
        let tally = try await TestDatabase.create("notnewapitally")
        try TallyBinary.run(
            ["import", "new-api", "--from", other.url, "--quiet"], databaseURL: tally.url,
            expecting: .failure)
        #expect(try await tally.scalar("SELECT count(*) FROM users") == 0)
    }
}
