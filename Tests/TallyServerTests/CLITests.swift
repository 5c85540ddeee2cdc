import Foundation
import TallyCore
import TallyStore
import TallyTestSupport
import Testing

/// The real `tally` binary against a real database.
@Suite("tally CLI", .serialized)
struct CLITests {
    static func sheetFile() throws -> String {
        let path = NSTemporaryDirectory() + "tally-design-sheet-\(getpid()).yaml"
        try designPriceSheet.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("prices load, prices list and quote: the design's golden examples")
    func quoteGoldens() async throws {
        let db = try await TestDatabase.create("cliquote")
        let load = try TallyBinary.run(["prices", "load", try Self.sheetFile(), "--json"], databaseURL: db.url)
        #expect(load.output.contains(#""models":7"#))
        let list = try TallyBinary.run(["prices", "list", "--json"], databaseURL: db.url)
        #expect(list.output.contains(#""effective_from":"2026-01-01 00:00:00.000000+00""#))
        let cases: [([String], Int64)] = [
            (["--model", "gpt-4o", "--prompt-tokens", "1000", "--completion-tokens", "500"], 3750),
            (["--model", "gpt-4o", "--group", "vip", "--prompt-tokens", "1000", "--completion-tokens", "500"], 3000),
            (["--model", "gpt-4o", "--prompt-tokens", "2"], 3),
            (["--model", "gemini-2.5-pro", "--prompt-tokens", "250000", "--completion-tokens", "1000"], 320_000),
            (["--model", "veo-3", "--video-seconds", "8", "--resolution", "1080p"], 2_000_000),
        ]
        for (arguments, units) in cases {
            let run = try TallyBinary.run(["quote", "--json"] + arguments, databaseURL: db.url)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [String: Any])
            #expect((object["units"] as? NSNumber)?.int64Value == units, "\(arguments)")
            #expect(object["usd"] as? String == Money.formatUSD(units: units))
        }
        let text = try TallyBinary.run(
            ["quote", "--model", "gpt-4o", "--group", "vip", "--prompt-tokens", "1000", "--completion-tokens", "500"],
            databaseURL: db.url)
        #expect(text.output.contains("total 3000 units = 0.006000 USD"))
        #expect(text.output.contains("ratio 0.8"))
        let unknown = try TallyBinary.run(["quote", "--model", "gpt-9"], databaseURL: db.url, expecting: .failure)
        #expect(unknown.errorOutput.contains("gpt-9"), "\(unknown.errorOutput)")
        try TallyBinary.run(
            ["quote", "--model", "gpt-4o", "--prompt-tokens", "1", "--at", "2025-06-01"],
            databaseURL: db.url, expecting: .failure)
        // What ingest refuses is refused with its reason, not priced (found by a review: quote
        // priced a video without seconds at 0, and cached tokens beyond the prompt).
        for (arguments, code) in [
            (["--model", "veo-3", "--resolution", "1080p"], "missing_usage"),
            (["--model", "gpt-4o", "--prompt-tokens", "100", "--cached-tokens", "400"], "invalid_usage"),
            (["--model", "gpt-4o", "--prompt-tokens", "100000001"], "absurd_usage"),
        ] {
            let refused = try TallyBinary.run(["quote"] + arguments, databaseURL: db.url, expecting: .failure)
            #expect(refused.errorOutput.contains(code), "\(arguments): \(refused.errorOutput)")
        }
        let failedVideo = try TallyBinary.run(
            ["quote", "--model", "veo-3", "--failed", "--json"], databaseURL: db.url)
        #expect(failedVideo.output.contains(#""units":0"#), "a failed request needs no usage")
    }

    @Test("a bad sheet is refused with every problem listed, and nothing is stored")
    func badSheet() async throws {
        let db = try await TestDatabase.create("clibadsheet")
        let path = NSTemporaryDirectory() + "tally-bad-sheet-\(getpid()).yaml"
        try """
        groups: {default: {ratio: "0"}}
        models:
          m1: {input: "-1", output: "2"}
          m2: {colour: blue}
        """.write(toFile: path, atomically: true, encoding: .utf8)
        try TallyBinary.run(["prices", "load", path], databaseURL: db.url, expecting: .failure)
        #expect(try await db.scalar("SELECT count(*) FROM price_versions") == 0)
    }

    /// A database with the default price sheet and `users` synthetic users, and a file of
    /// `lines` lines generated for them (`options`: more `tally logs gen` options).
    static func generatedLog(_ name: String, lines: Int, users: Int, _ options: [String] = []) async throws -> (
        TestDatabase, String
    ) {
        let db = try await TestDatabase.create(name)
        let defaultSheet = TestCluster.repositoryRoot.appendingPathComponent("ops/prices/default.yaml").path
        try TallyBinary.run(["prices", "load", defaultSheet], databaseURL: db.url)
        try TallyBinary.run(["logs", "seed", "--users", "\(users)"], databaseURL: db.url)
        let file = NSTemporaryDirectory() + "tally-\(name)-\(getpid()).ndjson"
        try TallyBinary.run(
            ["logs", "gen", "--lines", "\(lines)", "--users", "\(users)", "--out", file] + options, databaseURL: db.url)
        return (db, file)
    }

    @Test("200,000 generated lines through tally ingest: totals match and tally audit is clean")
    func bulkIngestMatchesAudit() async throws {
        let (db, file) = try await Self.generatedLog(
            "clibulk", lines: 200_000, users: 500, ["--dup-rate", "0.01", "--bad-rate", "0.005"])
        // The bad lines make it exit 3, not 0: a script must see that something was left out.
        let first = try TallyBinary.run(["ingest", file, "--quiet"], databaseURL: db.url, expecting: .failure)
        #expect(first.status == 3)
        let rejected = try await db.scalar("SELECT count(*) FROM ingest_rejects")
        #expect(rejected > 0)
        #expect(first.errorOutput.contains("\(rejected) line(s) rejected, kept in ingest_rejects"))
        // Each reject is numbered by its line in the file, past the first batch of 10,000 too (a
        // review found the numbers restarting with every batch, all under the run's one tid).
        let numbered = try await db.pool.withConnection { connection in
            try connection.query("SELECT line, request_id FROM ingest_rejects WHERE request_id IS NOT NULL").map {
                (try $0.decode(0, as: Int.self), try $0.decode(1, as: String.self))
            }
        }
        let fileLines = try String(contentsOfFile: file, encoding: .utf8).split(
            separator: "\n", omittingEmptySubsequences: false)
        #expect(numbered.contains { $0.0 > 10_000 })
        #expect(numbered.filter { !fileLines[$0.0 - 1].contains($0.1) }.isEmpty)
        let charged = try #require(
            first.output.split(separator: "\n").first { $0.hasPrefix("charged ") }?
                .split(separator: " ")[1]
        ).description
        // The sums below agree with the figure whatever the prices; lines priced at nothing would too.
        #expect(try #require(Int64(charged)) > 0)
        #expect(try await db.scalar("SELECT sum(quota) FROM request_logs") == Int64(charged))
        #expect(try await db.scalar("SELECT -sum(amount) FROM ledger WHERE kind = 'charge'") == Int64(charged))
        #expect(try await db.scalar("SELECT sum(quota) FROM usage_daily") == Int64(charged))
        let accepted = try await db.scalar("SELECT count(*) FROM request_logs")
        #expect(accepted > 195_000)
        // A replay charges nothing.
        let replay = try TallyBinary.run(["ingest", file, "--quiet"], databaseURL: db.url, expecting: .failure)
        #expect(replay.status == 3)
        #expect(replay.output.contains("accepted 0,"))
        #expect(try await db.scalar("SELECT count(*) FROM request_logs") == accepted)
        #expect(try TallyBinary.run(["audit"], databaseURL: db.url).output.contains("audit clean"))
        try? FileManager.default.removeItem(atPath: file)
    }

    /// Found by a review: batches were cut by line count only, and 10,000 lines of a few KB
    /// each (LiteLLM's payloads) made a batch the pipeline refuses whole (16 MiB).
    @Test("tally ingest cuts batches below the pipeline's byte limit: a 9 MB line and 3,000 of 7 KB go in")
    func ingestLongLines() async throws {
        let (db, generated) = try await Self.generatedLog("clilonglines", lines: 3000, users: 50)
        let padding = String(repeating: "x", count: 7_000)
        // The first line alone passes the batch's byte mark (8 MiB): the cut comes after it,
        // then the batch size holds again for the lines after it.
        let lines = try String(contentsOfFile: generated, encoding: .utf8).split(separator: "\n")
        let padded =
            lines.enumerated().map { index, line in
                "{\"padding\":\"\(index == 0 ? String(repeating: "y", count: 9 << 20) : padding)\","
                    + line.dropFirst()
            }.joined(separator: "\n") + "\n"
        #expect(padded.utf8.count > 16 << 20)
        try padded.write(toFile: generated, atomically: true, encoding: .utf8)
        try TallyBinary.run(["ingest", generated, "--quiet"], databaseURL: db.url)
        #expect(try await db.scalar("SELECT count(*) FROM request_logs") == 3000)
        try? FileManager.default.removeItem(atPath: generated)
    }

    @Test("tally logs gen --out replaces the file only once complete: killed midway, the earlier file stays whole")
    func generatedFileWholeOrNot() async throws {
        let file = NSTemporaryDirectory() + "tally-gen-\(getpid()).ndjson"
        try "earlier\n".write(toFile: file, atomically: true, encoding: .utf8)
        let generating = Process()
        generating.executableURL = TallyBinary.url
        generating.arguments = ["logs", "gen", "--lines", "50000000", "--out", file]
        generating.standardOutput = FileHandle.nullDevice
        try generating.run()
        // Until its staging file has grown: the run is well under way.
        let started = Date()
        while (try? FileManager.default.attributesOfItem(atPath: file + ".partial")[.size] as? Int) ?? 0 < 1 << 20,
            Date().timeIntervalSince(started) < 60
        {
            try await Task.sleep(for: .milliseconds(20))
        }
        kill(generating.processIdentifier, SIGKILL)
        generating.waitUntilExit()
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "earlier\n")
        try? FileManager.default.removeItem(atPath: file + ".partial")

        try TallyBinary.run(["logs", "gen", "--lines", "10", "--out", file], databaseURL: "")
        #expect(try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n").count == 10)
        #expect(!FileManager.default.fileExists(atPath: file + ".partial"))
        try? FileManager.default.removeItem(atPath: file)
    }

    /// Found by a security review: the staging file was opened through whatever stood at its
    /// name, so a link planted beside an output in /tmp had the caller truncate its target.
    @Test("--out never writes through a link at its staging name, and the file it makes is the caller's alone")
    func outputFileIsMadeAnew() throws {
        let directory = NSTemporaryDirectory() + "tally-out-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let victim = directory + "/victim", file = directory + "/lines.ndjson"
        try "keep me\n".write(toFile: victim, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: file + ".partial", withDestinationPath: victim)
        try TallyBinary.run(["logs", "gen", "--lines", "10", "--out", file], databaseURL: "")
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "keep me\n")
        #expect(try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n").count == 10)
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        #expect(attributes[.type] as? FileAttributeType == .typeRegular)
        #expect((attributes[.posixPermissions] as? Int).map { $0 & 0o077 } == 0)
    }

    /// Found by the review of that fix: the output's own name was still opened through whatever
    /// stood there, so a FIFO planted in /tmp received the export, and a link to a device had
    /// the device written over.
    @Test(
        "--out refuses a FIFO at its name, and another's link to a device; writes to a device or over a link to a file")
    func outputNameRefusesFIFOs() throws {
        let directory = NSTemporaryDirectory() + "tally-fifo-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fifo = directory + "/usage.csv"
        #expect(mkfifo(fifo, 0o666) == 0)
        // Someone reads it, as the one who planted it would: a write to it would not wait.
        let reader = open(fifo, O_RDONLY | O_NONBLOCK)
        defer { close(reader) }
        let refused = try TallyBinary.run(
            ["logs", "gen", "--lines", "10", "--out", fifo], databaseURL: "", expecting: .failure)
        #expect(refused.errorOutput.contains("is not a file or a device to write to"), "\(refused.errorOutput)")
        // A link to a regular file is replaced by the file, its target left alone.
        let target = directory + "/target", linked = directory + "/linked.ndjson"
        try "keep\n".write(toFile: target, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: linked, withDestinationPath: target)
        try TallyBinary.run(["logs", "gen", "--lines", "10", "--out", linked], databaseURL: "")
        #expect(try String(contentsOfFile: target, encoding: .utf8) == "keep\n")
        #expect(try String(contentsOfFile: linked, encoding: .utf8).split(separator: "\n").count == 10)
        try TallyBinary.run(["logs", "gen", "--lines", "10", "--out", "/dev/null"], databaseURL: "")
        // A link to a device that another user made (here given to nobody; only root may).
        let planted = directory + "/disk"
        try FileManager.default.createSymbolicLink(atPath: planted, withDestinationPath: "/dev/null")
        guard geteuid() == 0, lchown(planted, 65_534, 65_534) == 0 else {
            // A link owned by another user can only be made by root: nothing to check here.
            print("outputNameRefusesFIFOs: not root, another user's link to a device not checked")
            return
        }
        let notOurs = try TallyBinary.run(
            ["logs", "gen", "--lines", "10", "--out", planted], databaseURL: "", expecting: .failure)
        #expect(notOurs.errorOutput.contains("another's link to a device"), "\(notOurs.errorOutput)")
    }

    /// Found by a review: through a pipe `/dev/stdout` names a FIFO, which --out then refused.
    @Test("--out /dev/stdout writes to standard output, a pipe here")
    func outputToStandardOutput() throws {
        let run = try TallyBinary.run(["logs", "gen", "--lines", "10", "--out", "/dev/stdout"], databaseURL: "")
        #expect(run.output.split(separator: "\n").count == 10, "\(run.output)")
    }

    /// Found by a review of the exports: a write that failed (a full disk) trapped inside
    /// FileHandle.write(_:), so an export died with a crash instead of saying why.
    @Test("an output that cannot be written (a full disk) ends the command with exit 1 and why, not a crash")
    func fullDisk() throws {
        let run = try TallyBinary.run(
            ["logs", "gen", "--lines", "100000", "--out", "/dev/full"], databaseURL: "", expecting: .failure)
        #expect(run.status == 1)
        #expect(run.errorOutput.contains("cannot write /dev/full"), "\(run.errorOutput)")
    }

    /// Found by a review of the operator's side: an environment file's `TALLY_LOG_LEVEL=` or
    /// `TALLY_HOLD_COMMIT=` refused to start (and `TALLY_HOST=` was bound as "").
    @Test("tally serve reads a variable set to nothing as unset")
    func emptyVariablesAreUnset() async throws {
        let db = try await TestDatabase.create("cliemptyenv")
        let server = try ServerProcess(
            databaseURL: db.url,
            environment: ["TALLY_LOG_LEVEL": "", "TALLY_HOLD_COMMIT": "", "TALLY_WEBHOOKS": ""])
        defer { server.stop() }
        #expect(!server.log().contains("error"))
    }

    /// Found by a review: a top-up without --idempotency-key that failed without saying whether
    /// it committed (a lost connection) could only be retried by crediting again.
    @Test("tally admin topup without a key prints the one it made; a retry with it credits nothing")
    func topUpRetryKey() async throws {
        let db = try await TestDatabase.create("clitopup")
        let user = try TallyBinary.createUser("payer", databaseURL: db.url)
        let first = try TallyBinary.run(
            ["admin", "topup", "--user", "\(user)", "--amount", "5000"], databaseURL: db.url)
        let key = try #require(
            first.errorOutput.split(separator: " ").first { $0.hasPrefix("cli-") }.map(String.init))
        let retry = try TallyBinary.run(
            ["admin", "topup", "--user", "\(user)", "--amount", "5000", "--idempotency-key", key], databaseURL: db.url)
        #expect(retry.output.hasPrefix("already done"))
        #expect(try await db.scalar("SELECT quota FROM users WHERE id = $1", [user]) == 5000)
    }

    @Test("tally admin redemption disable and enable change an unused code; a used or unknown one is refused")
    func redemptionStatus() async throws {
        let db = try await TestDatabase.create("cliredemption")
        try TallyBinary.run(
            ["admin", "redemption", "create", "--name", "batch", "--quota", "500"], databaseURL: db.url)
        let id = try await db.scalar("SELECT max(id) FROM redemptions")
        let disabled = try TallyBinary.run(["admin", "redemption", "disable", "--id", "\(id)"], databaseURL: db.url)
        #expect(disabled.output.contains("disabled"))
        #expect(try await db.scalar("SELECT status FROM redemptions WHERE id = $1", [id]) == 2)
        try TallyBinary.run(["admin", "redemption", "enable", "--id", "\(id)"], databaseURL: db.url)
        #expect(try await db.scalar("SELECT status FROM redemptions WHERE id = $1", [id]) == 1)
        let unknown = try TallyBinary.run(
            ["admin", "redemption", "disable", "--id", "\(id + 1)"], databaseURL: db.url, expecting: .failure)
        #expect(unknown.errorOutput.contains("not found"))
    }

    /// Found by a review: the CLI gave a key any existing group, and authorize refuses a key
    /// whose group its owner may not use, so such a key could never be used.
    @Test("tally admin create-key refuses a group the owner may not use, as authorize would")
    func keyGroupUsable() async throws {
        let db = try await TestDatabase.create("clikeygroup")
        let user = try TallyBinary.createUser("plain", databaseURL: db.url)
        try await db.pool.withConnection { connection in
            try connection.execute("INSERT INTO groups (name, selectable) VALUES ('svip', false), ('open', true)")
        }
        let refused = try TallyBinary.run(
            ["admin", "create-key", "--user", "\(user)", "--name", "k", "--unlimited", "--group", "svip"],
            databaseURL: db.url,
            expecting: .failure)
        #expect(
            refused.errorOutput.contains(#"group "svip" is not available to this account"#), "\(refused.errorOutput)")
        try TallyBinary.run(
            ["admin", "create-key", "--user", "\(user)", "--name", "k", "--unlimited", "--group", "open"],
            databaseURL: db.url)
        #expect(try await db.scalar("SELECT count(*) FROM tokens WHERE user_id = $1", [user]) == 1)
    }

    /// A `tally serve` setting that is wrong, and what the refusal must say.
    struct BadServeSetting: Sendable, CustomTestStringConvertible {
        var arguments: [String] = []
        var environment: [String: String] = [:]
        let refusal: String
        var testDescription: String { (arguments + environment.map { "\($0)=\($1)" }).joined(separator: " ") }
    }

    @Test(
        "tally serve refuses a bad setting by name, with exit 64, before it opens the database",
        arguments: [
            BadServeSetting(
                arguments: ["--journal-concurrency", "0"], refusal: "--journal-concurrency must be at least 1"),
            BadServeSetting(
                environment: ["TALLY_JOURNAL_CONCURRENCY": "two"],
                refusal: #"TALLY_JOURNAL_CONCURRENCY must be a whole number, got "two""#),
            BadServeSetting(
                arguments: ["--hold-commit", "later"], refusal: #"--hold-commit must be sync or async, got "later""#),
            BadServeSetting(environment: ["TALLY_POOL_SIZE": "0"], refusal: "--pool-size must be at least 1"),
            BadServeSetting(arguments: ["--port", "70000"], refusal: "--port must be within 1…65535"),
            BadServeSetting(environment: ["TALLY_PORT": "0"], refusal: "--port must be within 1…65535"),
            BadServeSetting(
                environment: ["TALLY_SETTLE_INTERVAL": "1"], refusal: "--settle-interval is in milliseconds"),
            BadServeSetting(arguments: ["--hold-ttl", "0"], refusal: "--hold-ttl must be at least 1 second"),
            BadServeSetting(environment: ["TALLY_GATEWAY_SECRET": "CHANGE-ME"], refusal: "must be at least 16 bytes"),
            BadServeSetting(arguments: ["--gateway-secret", "short-secret"], refusal: "must be at least 16 bytes"),
        ])
    func serveRefusesBadSettings(_ setting: BadServeSetting) throws {
        // Nothing listens on port 1: a setting that got past validation fails on the connection
        // instead, with another message.
        let run = try TallyBinary.run(
            ["serve"] + setting.arguments, databaseURL: "postgres://tally@127.0.0.1:1/tally",
            environment: setting.environment, expecting: .failure)
        #expect(run.status == 64, "\(run.errorOutput)")
        #expect(run.errorOutput.contains(setting.refusal), "\(run.errorOutput)")
        #expect(!run.errorOutput.contains("PostgreSQL"), "\(run.errorOutput)")
    }

    /// Found by a review: every command migrated first, so a newer binary run for a report
    /// changed production's schema under its servers, and a role that may only read could not
    /// export at all (the migration's CREATE TABLE IF NOT EXISTS needs CREATE on the schema).
    @Test("read-only commands never migrate: a role that may only read runs them, and a schema behind is refused")
    func readOnlyCommandsDoNotMigrate() async throws {
        let db = try await TestDatabase.create("clireadonly")
        try await db.prepareBilling(users: 3)
        let reader = "tally_reader_\(getpid())"
        try await db.pool.withConnection { connection in
            try connection.execute("CREATE ROLE \(reader) LOGIN")
            try connection.execute("GRANT USAGE ON SCHEMA public TO \(reader)")
            try connection.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO \(reader)")
        }
        let month = UsageMonth(containing: Date()).description
        let commands = [
            ["audit"], ["export", "--month", month, "--by", "user,model"],
            ["statement", "--user", "1", "--month", month], ["prices", "list"],
            ["quote", "--model", "gpt-4o", "--prompt-tokens", "1000"], ["admin", "channel", "list"],
            ["admin", "webhook", "list"], ["retention", "--keep-months", "3", "--dry-run"],
        ]
        let readerURL = db.url.replacingOccurrences(of: "://tally@", with: "://\(reader)@")
        #expect(readerURL != db.url)
        for arguments in commands { try TallyBinary.run(arguments, databaseURL: readerURL) }

        let last = try #require(try Migration.bundled().last)
        try await db.pool.withConnection {
            _ = try $0.query("DELETE FROM schema_migrations WHERE version = $1", [last.version])
        }
        for arguments in commands {
            let refused = try TallyBinary.run(arguments, databaseURL: db.url, expecting: .failure)
            #expect(refused.status == 1, "\(arguments)")
            #expect(refused.errorOutput.contains(last.name), "\(arguments): \(refused.errorOutput)")
            #expect(refused.errorOutput.contains("tally migrate"), "\(arguments)")
        }
        #expect(
            try await db.scalar("SELECT count(*) FROM schema_migrations WHERE version = $1", [last.version]) == 0)
        try await db.pool.withConnection { connection in
            try connection.execute("DROP OWNED BY \(reader)")
            try connection.execute("DROP ROLE \(reader)")
        }
    }

    @Test("tally audit finds a corrupted balance and exits 1")
    func auditFindsCorruption() async throws {
        let db = try await TestDatabase.create("cliaudit")
        try await db.prepareBilling(users: 3)
        try TallyBinary.run(["audit"], databaseURL: db.url)
        try await db.pool.withConnection {
            _ = try $0.query("UPDATE users SET quota = quota + 1 WHERE username = 'synthetic-2'")
        }
        let audit = try TallyBinary.run(["audit"], databaseURL: db.url, expecting: .failure)
        #expect(audit.status == 1)
        #expect(audit.output.contains("synthetic-2"))
        #expect(audit.output.contains("balance"))
        #expect(!audit.output.contains("synthetic-1 "))
    }
}
