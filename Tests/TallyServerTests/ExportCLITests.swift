import Foundation
import TallyCore
import TallyStore
import TallyTestSupport
import Testing

/// `tally export`, `statement`, `audit --month` and `retention` as operators run them.
@Suite("tally export, statement, audit --month, retention", .serialized)
struct ExportCLITests {
    @Test("export to a file and to stdout, statement, audit --month; bad arguments fail")
    func exportAndStatement() async throws {
        let db = try await TestDatabase.create("exportcli")
        let fixture = try await UsageFixture.load(into: db, months: [UsageMonth("2026-09")!], linesPerMonth: 500)
        let month = UsageMonth("2026-09")!
        let file = NSTemporaryDirectory() + "tally-export-\(getpid()).csv"
        defer { try? FileManager.default.removeItem(atPath: file) }
        _ = try await WebhookRepository(pool: db.pool).add(
            url: "http://127.0.0.1:1/exports", secret: nil, events: [.exportReady], by: .cli)
        try TallyBinary.run(["export", "--month", "2026-09", "--by", "model,user", "--out", file], databaseURL: db.url)
        // The file is announced to the endpoints that subscribe to export.ready; stdout exports are not.
        #expect(
            try await db.scalar(
                "SELECT count(*) FROM webhook_outbox WHERE type = 'export.ready' AND payload->>'month' = '2026-09' AND payload->>'location' = $1",
                [file]) == 1)
        #expect(!FileManager.default.fileExists(atPath: file + ".partial"))
        let rows = try CSVParser.parse(try String(contentsOfFile: file, encoding: .utf8))
        #expect(
            UsageFixture.mismatch(Array(rows.dropFirst()), fixture.expectedRows(month: month, by: [.model, .user]))
                == nil)

        let jsonl = try TallyBinary.run(
            ["export", "--month", "2026-09", "--by", "day", "--format", "jsonl", "--quiet"], databaseURL: db.url)
        let jsonlRows = try JSONLinesExport.rows(jsonl.output, by: [.day])
        #expect(UsageFixture.mismatch(jsonlRows, fixture.expectedRows(month: month, by: [.day])) == nil)
        let raw = try TallyBinary.run(["export", "--month", "2026-09", "--raw", "--quiet"], databaseURL: db.url)
        let rawRows = try CSVParser.parse(raw.output)
        // Every request row of the month (the fixture's only month), each with its own cost.
        let header = try #require(rawRows.first)
        let id = try #require(header.firstIndex(of: "request_id")), quota = try #require(header.firstIndex(of: "quota"))
        let exported = Dictionary(
            rawRows.dropFirst().map { ($0[id], Int64($0[quota])) },
            uniquingKeysWith: { _, _ in nil })  // a request id twice compares unequal
        let stored = Dictionary(uniqueKeysWithValues: fixture.lines.map { ($0.requestID, Int64?.some($0.quota)) })
        #expect(exported == stored)

        let user = try #require(fixture.usernames.keys.min())
        let statement = try TallyBinary.run(
            ["statement", "--user", "\(user)", "--month", "2026-09", "--json"], databaseURL: db.url)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(statement.output.utf8)) as? [String: Any])
        #expect((object["charges"] as? NSNumber)?.int64Value == fixture.quota(month: month, userID: user))
        let text = try TallyBinary.run(["statement", "--user", "\(user)", "--month", "2026-09"], databaseURL: db.url)
        #expect(text.output.contains("Opening balance") && text.output.contains("Closing balance"))

        #expect(
            try TallyBinary.run(["audit", "--month", "2026-09"], databaseURL: db.url).output.contains("audit clean"))
        // Found by a review: --out was emptied before the export was checked. A raw export of a
        // month without request rows fails, and the file from before stays whole.
        let before = try String(contentsOfFile: file, encoding: .utf8)
        try TallyBinary.run(
            ["export", "--month", "2026-05", "--raw", "--out", file], databaseURL: db.url, expecting: .failure)
        #expect(try String(contentsOfFile: file, encoding: .utf8) == before)
        #expect(!FileManager.default.fileExists(atPath: file + ".partial"))
        for arguments in [
            ["export", "--month", "2026-9"], ["export", "--month", "2026-09", "--by", "colour"],
            ["export", "--month", "2026-09", "--format", "xml"],
            ["export", "--month", "2026-09", "--raw", "--format", "jsonl"],
            ["export", "--month", "2026-09", "--raw", "--by", "model"],
            ["statement", "--user", "\(user)", "--month", "09-2026"], ["audit", "--month", "x"],
            ["retention", "--keep-months", "0"], ["retention", "--keep-months", "1"],
        ] {
            let refused = try TallyBinary.run(arguments, databaseURL: db.url, expecting: .failure)
            #expect(!refused.errorOutput.isEmpty, "\(arguments) failed without saying why")
        }
    }

    @Test("retention --dry-run lists the old partitions and drops nothing; without it they are gone")
    func retention() async throws {
        let db = try await TestDatabase.create("retentioncli")
        let current = UsageMonth(containing: Date())
        let old = current.adding(months: -3)
        _ = try await UsageFixture.load(into: db, months: [old, current.adding(months: -1)], linesPerMonth: 50)
        let name = String(format: "request_logs_y%04dm%02d", old.year, old.month)
        // A month that does not audit clean: the dry run says the real run would stop there.
        let day = old.firstDay
        _ = try await db.pool.withConnection {
            try $0.query(
                "UPDATE usage_daily SET quota = quota + 1 WHERE day = (SELECT min(day) FROM usage_daily WHERE day >= $1::date)",
                [day])
        }
        let refused = try TallyBinary.run(["retention", "--keep-months", "3", "--dry-run"], databaseURL: db.url)
        #expect(refused.output.contains("would stop at \(name)"), "\(refused.output)")
        _ = try await db.pool.withConnection {
            try $0.query(
                "UPDATE usage_daily SET quota = quota - 1 WHERE day = (SELECT min(day) FROM usage_daily WHERE day >= $1::date)",
                [day])
        }
        let dry = try TallyBinary.run(["retention", "--keep-months", "3", "--dry-run"], databaseURL: db.url)
        #expect(dry.output.contains("would drop \(name)"))
        #expect(try await db.scalar("SELECT count(*) FROM tally_log_partitions WHERE name = $1", [name]) == 1)
        let real = try TallyBinary.run(["retention", "--keep-months", "3"], databaseURL: db.url)
        #expect(real.output.contains("dropped 1 partition(s)"))
        #expect(try await db.scalar("SELECT count(*) FROM tally_log_partitions WHERE name = $1", [name]) == 0)
        #expect(
            try await db.scalar(
                "SELECT count(*) FROM tally_log_partitions WHERE month >= $1::date",
                [current.adding(months: -2).firstDay]) >= 3)
        #expect(try TallyBinary.run(["audit"], databaseURL: db.url).output.contains("audit clean"))
    }
}
