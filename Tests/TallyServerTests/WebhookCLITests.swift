import Foundation
import TallyStore
import TallyTestSupport
import Testing

/// `tally prices load URL` and `tally admin webhook …` through the real binary.
@Suite("tally CLI: webhooks and sheet downloads")
struct WebhookCLITests {
    @Test("prices load downloads a sheet over http and records the URL, without its query, as the source")
    func pricesLoadURL() async throws {
        let db = try await TestDatabase.create("clipricesurl")
        try await WebhookReceiver().run { port in
            let base = "http://127.0.0.1:\(port)"
            let load = try TallyBinary.run(
                ["prices", "load", "\(base)/sheet.yaml?token=abc", "--json"], databaseURL: db.url)
            #expect(load.output.contains(#""models":7"#))
            #expect(load.output.contains(#""source":"\#(base)/sheet.yaml""#))
            #expect(!load.output.contains("token=abc"))
            // A non-2xx answer, a refused connection and a body that is not a sheet store nothing.
            try TallyBinary.run(["prices", "load", "\(base)/missing"], databaseURL: db.url, expecting: .failure)
            try TallyBinary.run(
                ["prices", "load", "http://127.0.0.1:1/sheet.yaml"], databaseURL: db.url,
                expecting: .failure)
            try TallyBinary.run(["prices", "load", "\(base)/big"], databaseURL: db.url, expecting: .failure)
            #expect(try await db.scalar("SELECT count(*) FROM price_versions") == 1)
            #expect(
                try await db.scalar("SELECT count(*) FROM price_versions WHERE source = $1", ["\(base)/sheet.yaml"])
                    == 1)
        }
    }

    @Test("admin webhook add prints a generated secret once; list never shows it; remove; every change audited")
    func adminWebhook() async throws {
        let db = try await TestDatabase.create("cliwebhook")
        let add = try TallyBinary.run(
            [
                "admin", "webhook", "add", "--url", "https://example.com/hook", "--events",
                "balance.low,user.suspended", "--json",
            ], databaseURL: db.url)
        let added = try #require(try JSONSerialization.jsonObject(with: Data(add.output.utf8)) as? [String: Any])
        let secret = try #require(added["secret"] as? String)
        #expect(secret.hasPrefix("whsec_"))
        #expect(added["events"] as? [String] == ["balance.low", "user.suspended"])
        setenv("TALLY_TEST_WEBHOOK_SECRET", "given-secret-0123456789", 1)
        let given = try TallyBinary.run(
            [
                "admin", "webhook", "add", "--url", "http://127.0.0.1:9/h",
                "--secret-env", "TALLY_TEST_WEBHOOK_SECRET",
            ], databaseURL: db.url)
        #expect(!given.output.contains("given-secret"))
        try TallyBinary.run(
            ["admin", "webhook", "add", "--url", "https://example.com/h", "--events", "nope"],
            databaseURL: db.url, expecting: .failure)

        let list = try TallyBinary.run(["admin", "webhook", "list"], databaseURL: db.url)
        #expect(list.output.contains("webhook 1 https://example.com/hook: balance.low,user.suspended"))
        #expect(list.output.contains("webhook 2 http://127.0.0.1:9/h: every event"))
        #expect(!list.output.contains(secret) && !list.output.contains("given-secret"))

        try TallyBinary.run(["admin", "webhook", "threshold", "--units", "250000"], databaseURL: db.url)
        #expect(try await db.scalar("SELECT low_balance_threshold FROM webhook_settings") == 250_000)
        try TallyBinary.run(["admin", "webhook", "remove", "--id", "1"], databaseURL: db.url)
        try TallyBinary.run(["admin", "webhook", "remove", "--id", "1"], databaseURL: db.url, expecting: .failure)
        #expect(
            try await db.scalar("SELECT count(*) FROM audit_log WHERE action LIKE 'webhook.%' AND actor = 'cli'") == 4)
    }

    @Test("admin suspend enqueues user.suspended for the configured endpoint")
    func suspendEnqueues() async throws {
        let db = try await TestDatabase.create("clisuspendhook")
        try await db.prepareBilling(users: 1)
        try TallyBinary.run(["admin", "webhook", "add", "--url", "http://127.0.0.1:9/h"], databaseURL: db.url)
        let userID = try await db.scalar("SELECT id FROM users WHERE username = 'synthetic-1'")
        try TallyBinary.run(["admin", "suspend", "--user", String(userID)], databaseURL: db.url)
        #expect(try await db.scalar("SELECT count(*) FROM webhook_outbox WHERE type = 'user.suspended'") == 1)
    }
}
