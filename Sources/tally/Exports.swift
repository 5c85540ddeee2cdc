import ArgumentParser
import Foundation
import TallyCore
import TallyPostgres
import TallyServer
import TallyStore

struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Export a month of usage: totals by user, token, model, group or day, or every request row.",
        discussion: """
            The same output as GET /api/admin/exports/usage (docs/exports.md): CSV with a header row (RFC 4180 \
            quoting) or JSON Lines, sorted by the --by dimensions in the order given, streamed in constant \
            memory. Totals come from the daily rollups; their quota sums to the ledger's charges of the month. \
            --raw streams every request row of the month (CSV, storage order) with COPY. Months are UTC. \
            Progress goes to standard error.
            """)

    @OptionGroup var database: DatabaseOptions

    @Option(help: "The month, YYYY-MM (UTC).")
    var month: String

    @Option(help: "Dimensions to total by, comma-separated: user, token, model, group, day. Default: user.")
    var by: String?

    @Option(help: "csv or jsonl.")
    var format = "csv"

    @Option(help: "Only this user's usage.")
    var user: Int64?

    @Option(
        help: "IANA time zone for the day boundaries of --by day (e.g. Asia/Shanghai); needs the month's request rows.")
    var tz: String?

    @Flag(help: "Every request row of the month instead of totals (CSV).")
    var raw = false

    @Option(help: "Write to this file instead of standard output; when done, an export.ready webhook names it.")
    var out: String?

    @Flag(help: "No progress line.")
    var quiet = false

    func run() async throws {
        let usageMonth = try monthOption(month, name: "--month")
        let export: UsageExport
        do {
            if raw {
                guard format == "csv", tz == nil, by == nil else {
                    throw ValidationError("--raw writes CSV rows as stored: leave out --by, --format and --tz")
                }
                export = .raw(month: usageMonth, userID: user)
            } else {
                export = try UsageExport(
                    month: usageMonth, by: ExportDimension.parseList(by ?? "user"), format: ExportFormat.parse(format),
                    userID: user, timeZone: tz)
            }
        } catch let error as StoreError {
            throw ValidationError(error.description)
        }
        let pool = try await database.currentPool(size: 1)
        let output = try OutputFile(path: out)
        let progress = ByteProgress(quiet: quiet)
        let summary: ExportSummary
        do {
            summary = try await UsageExporter(pool: pool).export(export) { chunk in
                try output.write(chunk)
                progress.add(chunk.count)
            }
            try output.commit()
        } catch {
            output.discard()
            throw error
        }
        progress.finish(summary)
        if let file = output.file {
            try await announce(file: file, export: export, month: usageMonth, rows: summary.rows, pool: pool)
        }
        await pool.close()
    }

    /// Tells the webhook endpoints that subscribe to `export.ready` where the file is.
    private func announce(file: String, export: UsageExport, month: UsageMonth, rows: Int, pool: PostgresPool)
        async throws
    {
        let location = URL(fileURLWithPath: file).standardizedFileURL.path
        let event = ExportReadyEvent(
            exportID: UUID().uuidString.lowercased(), kind: raw ? "raw" : "usage", month: month.description,
            location: location, rows: Int64(rows))
        _ = try await pool.withConnection { connection in try WebhookOutbox.enqueueExportReady(event, on: connection) }
    }
}

/// Bytes written so far, on standard error at most every half second.
final class ByteProgress: @unchecked Sendable {
    // Touched only from the export's pool thread, one chunk at a time, then by `finish`.
    private let started = Date()
    private let quiet: Bool
    private var bytes = 0
    private var shown: Date

    init(quiet: Bool) {
        self.quiet = quiet
        shown = started
    }

    func add(_ count: Int) {
        bytes += count
        guard !quiet, Date().timeIntervalSince(shown) >= 0.5 else { return }
        shown = Date()
        let elapsed = max(shown.timeIntervalSince(started), 0.001)
        FileHandle.standardError.write(
            Data(String(format: "\r%.1f MB, %.1f MB/s   ", Double(bytes) / 1e6, Double(bytes) / 1e6 / elapsed).utf8))
    }

    func finish(_ summary: ExportSummary) {
        guard !quiet else { return }
        let elapsed = max(Date().timeIntervalSince(started), 0.001)
        FileHandle.standardError.write(
            Data(
                String(format: "\r%d rows, %.1f MB in %.2f s\n", summary.rows, Double(summary.bytes) / 1e6, elapsed)
                    .utf8))
    }
}

struct StatementCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "statement",
        abstract: "A user's monthly statement: opening balance, credits, charges by model, closing balance.",
        discussion:
            "closing = opening + credits − charges, in quota units (500,000 = 1 USD); docs/exports.md says which month each ledger row counts in."
    )

    @OptionGroup var database: DatabaseOptions

    @Option(help: "The user's id.")
    var user: Int64

    @Option(help: "The month, YYYY-MM (UTC).")
    var month: String

    @Flag(help: "Print the statement as the JSON `data` of GET /api/admin/statements/{user_id}/{month}.")
    var json = false

    func run() async throws {
        let usageMonth = try monthOption(month, name: "--month")
        let pool = try await database.currentPool(size: 1)
        let statement = try await StatementRepository(pool: pool).statement(userID: user, month: usageMonth)
        await pool.close()
        print(json ? try StatementJSON.text(statement) : statement.text, terminator: json ? "\n" : "")
    }
}

struct Retention: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Drop the request rows of old months: whole request_logs partitions, never a bulk DELETE.",
        discussion: """
            Keeps the current UTC month and the --keep-months − 1 before it (at least 2 months). Each older monthly partition is \
            first audited (its request rows, usage rollups and ledger charges must agree, as tally audit \
            --month checks), then detached concurrently (ingest keeps running) and dropped; each drop is \
            audited. Usage rollups, the ledger, statements and rollup exports of dropped months stay.
            """)

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Months of request rows to keep, counting the current month.")
    var keepMonths: Int

    @Flag(help: "Only list what would be dropped.")
    var dryRun = false

    @Flag(help: "Drop months even when they do not audit clean.")
    var noVerify = false

    func validate() throws {
        guard keepMonths >= LogRetention.minimumKeepMonths else {
            throw ValidationError("--" + LogRetention.tooFewMonths)
        }
    }

    func run() async throws {
        let pool = try await dryRun ? database.currentPool(size: 1) : database.migratedPool(size: 1)
        let retention = LogRetention(pool: pool)
        let plan = try await retention.plan(keepMonths: keepMonths)
        print("keeping \(plan.kept.count) partition(s) from \(plan.firstKept) on")
        for partition in plan.reattached {
            print(
                "\(dryRun ? "would attach" : "attaching") \(partition.name) again (left detached by an interrupted run)"
            )
        }
        if dryRun {
            // The same audit a real run makes first, so the dry run says what it would refuse.
            for partition in plan.dropped {
                let problems = noVerify ? [] : try await Auditor(pool: pool).run(month: partition.month)
                let size = "\(partition.month), \(partition.bytes / 1_048_576) MiB"
                guard problems.isEmpty else {
                    print("would stop at \(partition.name) (\(size)): it does not audit clean (\(problems[0]))")
                    break
                }
                print("would drop \(partition.name) (\(size))")
            }
        } else {
            // Each drop once it happened: a month that fails its audit stops the run there.
            let dropped = try await retention.apply(plan, verify: !noVerify, by: .cli)
            for partition in dropped {
                print("dropped \(partition.name) (\(partition.month), \(partition.bytes / 1_048_576) MiB)")
            }
            print("dropped \(dropped.count) partition(s)")
        }
        await pool.close()
    }
}
