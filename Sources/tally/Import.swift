import ArgumentParser
import Foundation
import TallyCore
import TallyPostgres
import TallyStore

struct Import: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Import accounts, keys and usage from another billing system.",
        subcommands: [NewAPI.self])

    struct NewAPI: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "new-api",
            abstract:
                "Copy a new-api PostgreSQL database into Tally: users, keys, groups, channels, redemption codes, balances, logs.",
            discussion: """
                Idempotent: run it again and only what changed in new-api since is copied (the second run over an \
                unchanged database changes nothing). new-api is only read. Keys are stored hashed; balances become \
                ledger adjustments; consumption and error logs become request logs with request id <source>:<log id>. \
                Progress goes to standard error, the summary to standard output. See docs/import.md.
                """)

        @OptionGroup var database: DatabaseOptions

        @Option(name: .customLong("from"), help: "new-api's PostgreSQL URL (postgres://… or a libpq conninfo string).")
        var from: String

        @Option(
            name: .customLong("logs-from"),
            help: "new-api's log database, when new-api keeps its logs apart (LOG_SQL_DSN); default: --from.")
        var logsFrom: String?

        @Option(
            help: "Name of this source in the import map and in request ids; give a second new-api database its own.")
        var source = "new-api"

        @Option(help: "Log rows per transaction.")
        var batchSize = 10_000

        @Flag(help: "Read every log again instead of resuming after the last one copied.")
        var allLogs = false

        @Flag(help: "Print the summary as one JSON object.")
        var json = false

        @Flag(help: "No progress on standard error.")
        var quiet = false

        func validate() throws {
            guard (100...50_000).contains(batchSize) else {
                throw ValidationError("--batch-size must be within 100…50000")
            }
        }

        var importOptions: NewAPIImportOptions {
            var options = NewAPIImportOptions()
            options.source = source
            options.batchSize = batchSize
            options.allLogs = allLogs
            return options
        }

        func run() async throws {
            let options = importOptions
            let pool = try await database.migratedPool(size: 1)
            let sourceURL = from, logsURL = logsFrom, quiet = quiet
            let started = Date()
            let summary: NewAPIImportSummary
            do {
                summary = try await pool.withConnection { target in
                    let sourceConnection = try Self.connect(sourceURL, "the new-api database")
                    let logConnection = try logsURL.map { try Self.connect($0, "the new-api log database") }
                    return try NewAPIImporter(
                        source: sourceConnection, logSource: logConnection, target: target,
                        options: options
                    ) { message in
                        if !quiet { FileHandle.standardError.write(Data("tally import: \(message)\n".utf8)) }
                    }.run()
                }
            } catch {
                await pool.close()
                // What committed stays (each batch is one transaction); a re-run resumes from there.
                FileHandle.standardError.write(Data("tally import: error: \(error)\n".utf8))
                throw ExitCode.failure
            }
            await pool.close()
            if json {
                print(Self.json(summary))
            } else {
                Self.printText(summary, elapsed: Date().timeIntervalSince(started))
            }
        }

        static func connect(_ url: String, _ what: String) throws -> PostgresConnection {
            do { return try PostgresConnection(url: url) } catch {
                throw StoreError.invalid("cannot connect to \(what): \(error)")
            }
        }

        static func printText(_ summary: NewAPIImportSummary, elapsed: TimeInterval) {
            func line(_ name: String, _ counts: ImportCounts) {
                print(
                    "\(name): \(counts.created) created, \(counts.updated) updated, \(counts.linked) linked, "
                        + "\(counts.renamed) renamed, \(counts.removed) removed, \(counts.skipped) skipped")
            }
            print("groups: \(summary.groupsCreated) created")
            line("users", summary.users)
            print("access tokens replaced: \(summary.accessTokensReplaced)")
            line("keys", summary.tokens)
            line("channels", summary.channels)
            line("redemption codes", summary.redemptions)
            print(
                "logs: \(summary.logsRead) read, \(summary.logsImported) imported, \(summary.logsDuplicate) already there, \(summary.logsSkipped) skipped"
            )
            print("charged \(summary.chargedQuota) units = \(Money.formatUSD(units: summary.chargedQuota)) USD")
            print(
                "balances: \(summary.balanceAdjustments) adjustment(s), \(summary.adjustedQuota) units; key quotas set: \(summary.tokenQuotasSet)"
            )
            print("used_quota: new-api \(summary.sourceUsedQuota), imported logs \(summary.tallyUsedQuota)")
            if !summary.groupRatios.isEmpty {
                let ratios = summary.groupRatios.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(
                    separator: ", ")
                print("new-api group ratios (set them in your price sheet's groups): \(ratios)")
            }
            for warning in summary.warnings { print("warning: \(warning)") }
            print(summary.changed ? "changed" : "nothing to change: Tally was up to date")
            print(String(format: "elapsed %.2f s", elapsed))
        }

        static func json(_ summary: NewAPIImportSummary) -> String {
            func counts(_ counts: ImportCounts) -> String {
                jsonObject([
                    ("created", "\(counts.created)"), ("updated", "\(counts.updated)"), ("linked", "\(counts.linked)"),
                    ("renamed", "\(counts.renamed)"), ("removed", "\(counts.removed)"),
                    ("skipped", "\(counts.skipped)"),
                ])
            }
            return jsonObject([
                ("groups_created", "\(summary.groupsCreated)"), ("users", counts(summary.users)),
                ("access_tokens_replaced", "\(summary.accessTokensReplaced)"), ("tokens", counts(summary.tokens)),
                ("channels", counts(summary.channels)), ("redemptions", counts(summary.redemptions)),
                (
                    "logs",
                    jsonObject([
                        ("read", "\(summary.logsRead)"), ("imported", "\(summary.logsImported)"),
                        ("duplicate", "\(summary.logsDuplicate)"), ("skipped", "\(summary.logsSkipped)"),
                    ])
                ),
                ("charged_quota", "\(summary.chargedQuota)"), ("balance_adjustments", "\(summary.balanceAdjustments)"),
                ("adjusted_quota", "\(summary.adjustedQuota)"), ("token_quotas_set", "\(summary.tokenQuotasSet)"),
                ("source_used_quota", "\(summary.sourceUsedQuota)"), ("tally_used_quota", "\(summary.tallyUsedQuota)"),
                (
                    "group_ratios",
                    jsonObject(
                        summary.groupRatios.sorted { $0.key < $1.key }.map { ($0.key, JSONText.quote($0.value)) })
                ),
                ("warnings", "[" + summary.warnings.map(JSONText.quote).joined(separator: ",") + "]"),
                ("changed", "\(summary.changed)"),
            ])
        }
    }
}
