import Foundation
import TallyCore
import TallyPostgres

/// What one `tally import new-api` run may be told.
public struct NewAPIImportOptions: Sendable {
    /// Names the source in `import_map`, in request ids (`<source>:<log id>`) and in ledger
    /// reasons; a second new-api database needs its own name.
    public var source = "new-api"
    /// Log rows per transaction.
    public var batchSize = 10_000
    /// Read every log again instead of resuming after the last one copied.
    public var allLogs = false
    /// Log ids re-read before the resume point, for rows that committed after a later id was read.
    public var resumeWindow: Int64 = 100_000

    public init() {}
}

/// Counts of one kind of row after a run.
public struct ImportCounts: Sendable, Equatable {
    /// Rows created in Tally.
    public var created = 0
    /// Existing Tally rows changed to match the source.
    public var updated = 0
    /// Existing Tally rows taken to be the source's (same username, same key).
    public var linked = 0
    /// Accounts whose username changed: to new-api's, or suffixed because another account holds
    /// the name (see the warnings).
    public var renamed = 0
    /// Rows new-api no longer has: accounts and channels disabled, keys deleted.
    public var removed = 0
    /// Source rows left out (see the warnings).
    public var skipped = 0

    /// Rows this run changed in Tally.
    var changes: Int { created + updated + linked + renamed + removed }
}

/// What a run did.
public struct NewAPIImportSummary: Sendable, Equatable {
    public var groupsCreated = 0
    public var users = ImportCounts()
    /// Accounts given the access token new-api rotated to since the last run.
    public var accessTokensReplaced = 0
    public var tokens = ImportCounts()
    public var channels = ImportCounts()
    public var redemptions = ImportCounts()
    /// Request logs read from new-api (consumption and errors), copied, already there, skipped.
    public var logsRead = 0, logsImported = 0, logsDuplicate = 0, logsSkipped = 0
    public var chargedQuota: Int64 = 0
    /// Ledger adjustments that brought balances to new-api's, and their sum.
    public var balanceAdjustments = 0
    public var adjustedQuota: Int64 = 0
    public var tokenQuotasSet = 0
    /// new-api's users.used_quota total, and the used_quota of the same accounts in Tally (the
    /// imported logs): the difference is usage whose logs new-api no longer had.
    public var sourceUsedQuota: Int64 = 0
    public var tallyUsedQuota: Int64 = 0
    /// new-api's GroupRatio: Tally takes ratios from the price sheet, so they are reported.
    public var groupRatios: [String: String] = [:]
    public var warnings: [String] = []

    /// Rows of the account tables the run changed (groups, users, keys, channels, codes).
    var accountChanges: Int {
        groupsCreated + users.changes + accessTokensReplaced + tokens.changes + channels.changes + redemptions.changes
    }

    /// Logs copied and balances or key quotas moved.
    var moneyChanges: Int { logsImported + balanceAdjustments + tokenQuotasSet }

    /// False when the run found Tally already up to date.
    public var changed: Bool { accountChanges + moneyChanges > 0 }
}

/// Copies a new-api PostgreSQL database into Tally: groups, users, keys (hashed on the way),
/// channels, redemption codes, request logs and balances. Idempotent: `import_map` remembers
/// which source row became which Tally row, request ids are derived from log ids, and balances
/// are brought to new-api's by ledger adjustments of the difference, so a second run over an
/// unchanged source changes nothing. See docs/import.md.
///
/// Runs on connections it does not own: `source` (only read, in a read-only session), `logSource`
/// when new-api keeps its logs in a database of their own (LOG_SQL_DSN; else the logs are read
/// from `source`) and `target` (Tally, migrated), all used from the calling thread only.
public struct NewAPIImporter {
    let source: NewAPISource
    let logSource: NewAPISource
    let target: PostgresConnection
    let options: NewAPIImportOptions
    let tid: String
    let progress: @Sendable (String) -> Void

    public init(
        source: PostgresConnection, logSource: PostgresConnection? = nil, target: PostgresConnection,
        options: NewAPIImportOptions, progress: @escaping @Sendable (String) -> Void = { _ in }
    ) throws {
        guard !options.source.isEmpty, options.source.utf8.count <= 40,
            options.source.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0 != ":" })
        else {
            throw StoreError.invalid("the source name must be 1–40 printable ASCII characters without spaces or ':'")
        }
        if let logSource {
            self.source = try NewAPISource(connection: source, tables: NewAPISource.accountTables)
            self.logSource = try NewAPISource(connection: logSource, tables: NewAPISource.logTables)
        } else {
            self.source = try NewAPISource(
                connection: source,
                tables: NewAPISource.accountTables.union(NewAPISource.logTables))
            self.logSource = self.source
        }
        self.target = target
        self.options = options
        tid = TraceID.generate()
        self.progress = progress
    }

    public func run() throws -> NewAPIImportSummary {
        var summary = NewAPIImportSummary()
        try target.execute("SET client_encoding TO 'UTF8'")
        // Its statements join temporary staging tables with the account tables, which Citus
        // cannot send to its workers (found when the suite first ran there: every run failed
        // with a missing import_users). Refused before anything is written.
        if try CitusLayout.isInstalled(on: target) {
            throw StoreError.invalid(
                "tally import new-api runs on one PostgreSQL, not on a Citus cluster: import into a database "
                    + "without the citus extension, then add it with tally migrate --citus, which distributes "
                    + "the imported tables (docs/import.md)")
        }
        try source.checkQuotaPerUnit()
        try target.execute(NewAPIImportSQL.createStaging)
        defer { try? target.execute(NewAPIImportSQL.dropStaging) }
        // Read before the accounts' snapshot: every log up to it belongs to a user, key and
        // channel that snapshot holds. Later logs are the next run's (read now, a request of a
        // user registered meanwhile was skipped, and the cursor moved past it for good).
        let lastLogID = try logSource.lastLogID()
        try importAccounts(&summary)
        try importLogs(&summary, through: lastLogID)
        try settleBalances(&summary)
        return summary
    }

    // MARK: Staging

    /// Streams the rows of `query` (on the source, inside its snapshot) into the staging table
    /// through `transform`, with a cursor so memory stays flat whatever the table's size.
    /// `transform` returns false to leave a row out.
    func stage(_ query: String, into table: String, _ transform: (PostgresRow, inout CopyRow) throws -> Bool) throws {
        try source.connection.execute("DECLARE import_rows NO SCROLL CURSOR FOR \(query)")
        defer { try? source.connection.execute("CLOSE import_rows") }
        let columns = NewAPIImportSQL.stagingColumns[table]!
        try target.copyIn("COPY \(table) (\(columns)) FROM STDIN") { writer in
            var row = CopyRow()
            while true {
                let rows = try source.connection.query("FETCH 5000 FROM import_rows")
                if rows.isEmpty { break }
                try rows.forEach { source in
                    row.reset()
                    if try transform(source, &row) {
                        row.endRow()
                        try writer.write(row.bytes)
                    }
                }
            }
        }
    }

    func stageGroups(_ options: (ratios: [String: String], usable: [String: String])) throws {
        try target.copyIn("COPY import_groups (\(NewAPIImportSQL.stagingColumns["import_groups"]!)) FROM STDIN") {
            writer in
            var row = CopyRow()
            for name in Set(options.ratios.keys).union(options.usable.keys).sorted() {
                row.reset()
                row.append(name)
                row.append(options.usable[name] ?? "")
                row.append(options.usable[name] != nil)
                row.append(options.ratios[name])
                row.endRow()
                try writer.write(row.bytes)
            }
        }
    }

    /// Columns as `NewAPISource.users`; the access token becomes its hash and last 6.
    static func stageUser(_ source: PostgresRow, _ row: inout CopyRow) throws -> Bool {
        for column in 0..<9 { row.append(source.text(column)) }
        let token = source.text(9)?.trimmingCharacters(in: .whitespaces) ?? ""
        row.append(token.isEmpty ? nil : SecretHash(of: token).postgresText)
        row.append(token.isEmpty ? nil : Secrets.displayTail(token))
        row.append(source.text(10))
        row.append(source.text(11))
        return true
    }

    /// Columns as `NewAPISource.tokens`. new-api keeps keys without "sk-": Tally hashes the
    /// full "sk-" key, as clients send it. A key whose IP allow-list Tally cannot read comes
    /// in disabled rather than unrestricted.
    static func stageToken(_ source: PostgresRow, _ row: inout CopyRow, warnings: inout [String]) throws -> Bool {
        var key = source.text(3)?.trimmingCharacters(in: .whitespaces) ?? ""
        if key.hasPrefix("sk-") { key.removeFirst(3) }
        guard !key.isEmpty else {
            warnings.append("key #\(source.text(0) ?? "?") skipped: it has no key text")
            return false
        }
        var status = try source.decode(4, as: Int64.self)
        let allowIPs: String
        do { allowIPs = try TokenRules.normalizedAllowIPs(source.text(10) ?? "") } catch {
            warnings.append(
                "key #\(source.text(0) ?? "?") (…\(Secrets.displayTail(key))): allow_ips unreadable (\(error)); "
                    + "imported disabled, its list kept as it was (it allows no address until corrected)"
            )
            // Kept, not emptied: an empty list allows every address, and the owner may enable
            // the key again. Unreadable, the stored list allows none (authorize and the key's
            // own routes alike) until an edit replaces it with a valid one.
            allowIPs = source.text(10) ?? ""
            status = Int64(TokenStatus.disabled.rawValue)
        }
        let limits = source.text(9) ?? ""
        row.append(source.text(0))
        row.append(source.text(1))
        row.append(truncated(source.text(2) ?? "", bytes: TokenRules.maximumNameBytes))
        row.append(SecretHash(of: "sk-" + key).postgresText)
        row.append(Secrets.displayTail(key))
        row.append(status)
        row.append(source.text(5))
        row.append(source.text(6))
        row.append(source.text(7))
        row.append(source.text(8))
        row.append((try? TokenRules.normalizedModelLimits(limits)) ?? limits)
        row.append(allowIPs)
        for column in 11...14 { row.append(source.text(column)) }
        return true
    }

    /// Columns as `NewAPISource.channels`; groups and models become arrays of the valid names
    /// (every name left out warns).
    static func stageChannel(_ source: PostgresRow, _ row: inout CopyRow, warnings: inout [String]) throws -> Bool {
        let id = source.text(0) ?? "0"
        let name = (source.text(1) ?? "").trimmingCharacters(in: .whitespaces)
        let status = try source.decode(2, as: Int64.self)
        let groups = names(source.text(3), valid: GroupRules.isValidName)
        let models = names(source.text(4)) { (try? ModelNames.validate([$0], field: "models")) != nil }
        for group in groups.invalid where group != "auto" {
            warnings.append("channel #\(id): group \"\(group.prefix(64))\" skipped: not a valid Tally group name")
        }
        for model in models.invalid {
            warnings.append("channel #\(id): model \"\(model.prefix(200))\" skipped: not a valid model name")
        }
        // Groups new-api named, none of which Tally can hold: given `default` (as a channel
        // without groups is) it would serve every default-group user, so it comes in disabled.
        let unreachable = groups.valid.isEmpty && groups.invalid.contains { $0 != "auto" }
        if unreachable {
            warnings.append(
                "channel #\(id): none of its groups is a valid Tally group name; imported disabled "
                    + "(give it groups, then enable it)")
        }
        row.append(id)
        row.append(name.isEmpty ? "channel \(id)" : String(name.prefix(200)))
        row.append(Int64((unreachable ? .disabled : ChannelStatus(rawValue: Int(status)) ?? .disabled).rawValue))
        row.append(TextArray(groups.valid.isEmpty ? ["default"] : groups.valid).postgresText)
        row.append(TextArray(models.valid).postgresText)
        row.append(source.text(5))
        row.append(source.text(6))
        return true
    }

    /// Columns as `NewAPISource.redemptions`; the code becomes its hash and last 6 (codes are
    /// redeemed lower-cased, as Tally's own).
    static func stageRedemption(_ source: PostgresRow, _ row: inout CopyRow) throws -> Bool {
        let code = (source.text(2) ?? "").trimmingCharacters(in: .whitespaces).lowercased()
        guard !code.isEmpty else { return false }
        row.append(source.text(0))
        row.append(String((source.text(1) ?? "").prefix(20)))
        row.append(SecretHash(of: code).postgresText)
        row.append(Secrets.displayTail(code))
        for column in 3...10 { row.append(source.text(column)) }
        return true
    }

    /// The distinct non-empty names of a comma-separated list, in order: those `valid` accepts,
    /// and the others.
    static func names(_ list: String?, valid: (String) -> Bool) -> (valid: [String], invalid: [String]) {
        var result: (valid: [String], invalid: [String]) = ([], [])
        for part in (list ?? "").split(separator: ",") {
            let name = part.trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty, !result.valid.contains(name), !result.invalid.contains(name) else { continue }
            if valid(name) { result.valid.append(name) } else { result.invalid.append(name) }
        }
        return result
    }

    /// At most `bytes` UTF-8 bytes, cut at a character boundary.
    static func truncated(_ text: String, bytes: Int) -> String {
        var result = ""
        for character in text {
            guard result.utf8.count + character.utf8.count <= bytes else { break }
            result.append(character)
        }
        return result
    }

    // MARK: Logs

    /// Streams the consumption and error logs in id order, a batch per transaction: COPY out
    /// of new-api straight into a staging table, then the ingest pipeline's set-based steps.
    private func importLogs(_ summary: inout NewAPIImportSummary, through last: Int64) throws {
        let stored = try target.query(NewAPIImportSQL.cursor, [options.source]).first?.decode(0, as: Int64.self) ?? 0
        var cursor = options.allLogs ? 0 : max(0, stored - options.resumeWindow)
        var ensuredMonths: Set<String> = []
        var replacedGroups: [String: Int] = [:]
        // Months whose request rows retention dropped: their logs were charged when they came
        // in, and with the rows gone nothing would tell a log read again from a new one.
        let droppedMonths = try DroppedLogMonths.read(on: target).map(\.description)
        var ofDroppedMonths = 0
        progress("reading logs after id \(cursor) (last \(last))")
        while true {
            let (staged, highest) = try stageLogs(after: cursor, through: last)
            guard staged > 0 else { break }
            let dropped =
                droppedMonths.isEmpty
                ? 0 : try target.query(NewAPIImportSQL.unstageDroppedMonths, [TextArray(droppedMonths)]).affectedRows
            ofDroppedMonths += dropped
            let rows = staged - dropped
            try ensurePartitions(&ensuredMonths)
            try target.query(NewAPIImportSQL.replacedLogGroups).forEach { row in
                replacedGroups[try row.decode(0), default: 0] += try row.decode(1, as: Int.self)
            }
            let batch = try storeLogs(rows: rows)
            summary.logsRead += staged
            summary.logsImported += batch.imported
            summary.logsDuplicate += batch.eligible - batch.imported
            summary.logsSkipped += rows - batch.eligible
            summary.chargedQuota += batch.charged
            try target.query(NewAPIImportSQL.saveCursor, [options.source, highest])
            cursor = highest
            progress("logs: \(summary.logsRead) read, \(summary.logsImported) imported, at id \(highest) of \(last)")
            if staged < options.batchSize { break }
        }
        if ofDroppedMonths > 0 {
            summary.logsDuplicate += ofDroppedMonths
            summary.warnings.append(
                "\(ofDroppedMonths) log(s) of months whose request rows retention dropped were left out (counted "
                    + "as already there): a log imported before cannot be told from a new one there, and would be "
                    + "charged twice")
        }
        if summary.logsSkipped > 0 {
            summary.warnings.append("\(summary.logsSkipped) log(s) skipped: their user is not in new-api's users table")
        }
        for (group, count) in replacedGroups.sorted(by: { $0.key < $1.key }) {
            summary.warnings.append(
                "logs: group \"\(group.prefix(64))\" is not a Tally group; \(count) log(s) read "
                    + "carry their account's group instead")
        }
    }

    /// COPY of one batch from the source into `import_log_rows`; returns its row count and
    /// highest log id (the first field of each row).
    private func stageLogs(after cursor: Int64, through last: Int64) throws -> (rows: Int, highest: Int64) {
        try target.execute("TRUNCATE import_log_rows")
        var rows = 0
        var highest = cursor
        try target.copyIn("COPY import_log_rows (\(NewAPIImportSQL.logColumns)) FROM STDIN") { writer in
            try logSource.connection.copyOut(logSource.logsCopy(after: cursor, through: last, limit: options.batchSize))
            { bytes in
                rows += 1
                var id: Int64 = 0
                for byte in bytes {
                    guard byte >= 48, byte <= 57 else { break }
                    id = id * 10 + Int64(byte - 48)
                }
                highest = max(highest, id)
                try writer.write(bytes)
            }
        }
        return (rows, highest)
    }

    /// Partitions for the staged months, created outside the batch transaction (DDL on the
    /// partitioned table must not wait inside it), without making ingest queue behind the
    /// lock while streamed batches are open (``LogPartitions``).
    private func ensurePartitions(_ ensured: inout Set<String>) throws {
        for month in try target.query(NewAPIImportSQL.stagedMonths).map({ try $0.decode(0, as: String.self) })
        where !ensured.contains(month) {
            _ = try LogPartitions.create(from: month, months: 1, on: target)
            ensured.insert(month)
        }
    }

    /// Nothing new in a batch: its transaction is rolled back, leaving no trace.
    private struct NothingNew: Error {}

    /// One batch in one transaction, appended as ingest appends: new rows into `request_logs`,
    /// ledger charges and pending usage, which the fold adds to rollups; the balances are folded
    /// here, without their balance events.
    private func storeLogs(rows: Int) throws -> (eligible: Int, imported: Int, charged: Int64) {
        let name = options.source
        let eligible = try target.query(NewAPIImportSQL.eligibleLogs, [name])[0].decode(0, as: Int.self)
        do {
            return try target.transaction { target in
                try target.execute(NewAPIImportSQL.createFresh)
                let batchID = try target.query(PostgresIngestRepository.nextBatchID)[0].decode(0, as: Int64.self)
                try target.query(NewAPIImportSQL.insertLogs, [name, batchID])
                let totals = try target.query(NewAPIImportSQL.freshTotals)[0]
                let imported = try totals.decode(0, as: Int.self)
                guard imported > 0 else { throw NothingNew() }
                try target.query(NewAPIImportSQL.appendLedger, [name, batchID, tid])
                try target.query(NewAPIImportSQL.appendPendingCharges, [batchID])
                try target.query(NewAPIImportSQL.appendPendingUsage, [batchID])
                try target.query(NewAPIImportSQL.foldBatchUsers, [batchID])
                try target.execute(NewAPIImportSQL.dropBalanceEvents)
                try target.query(
                    PostgresIngestRepository.insertBatch, [batchID, tid, "import", rows, imported, rows - imported, 0])
                return (eligible, imported, try totals.decode(1, as: Int64.self))
            }
        } catch is NothingNew {
            return (eligible, 0, 0)
        }
    }

    // MARK: Balances

    /// Brings each imported account's balance to new-api's with one ledger adjustment of the
    /// difference, and each key's remaining quota to new-api's; records what the run did to money
    /// in the audit log, in the same transaction.
    private func settleBalances(_ summary: inout NewAPIImportSummary) throws {
        progress("settling balances")
        let name = options.source
        try target.transaction { target in
            try target.query(NewAPIImportSQL.foldImportedUsers, [name])
            try target.execute(NewAPIImportSQL.dropBalanceEvents)
            let amounts = try target.query(NewAPIImportSQL.adjustBalances, [name, tid]).map {
                try $0.decode(0, as: Int64.self)
            }
            try target.query(NewAPIImportSQL.setBalances, [name])
            try target.query(NewAPIImportSQL.markBalancesSet, [name])
            let tokenQuotas = try target.query(NewAPIImportSQL.setTokenQuotas, [name]).affectedRows
            // Balances and key quotas may have gone down: running instances give their leases back.
            try ChangeNotice.send([.import], on: target)
            let used = try target.query(NewAPIImportSQL.usedQuotaTotals, [name])[0]
            summary.balanceAdjustments = amounts.count
            summary.adjustedQuota = amounts.reduce(0, +)
            summary.tokenQuotasSet = tokenQuotas
            summary.sourceUsedQuota = try used.decode(0, as: Int64.self)
            summary.tallyUsedQuota = try used.decode(1, as: Int64.self)
            if summary.moneyChanges > 0 {
                try recordAudit(
                    "import.new-api.money",
                    [
                        "logs_imported": summary.logsImported, "charged_quota": summary.chargedQuota,
                        "balance_adjustments": summary.balanceAdjustments, "adjusted_quota": summary.adjustedQuota,
                        "token_quotas_set": summary.tokenQuotasSet,
                    ])
            }
        }
        // The imported usage, rolled up now rather than at the next settler's roll-up.
        try target.query(Settler.rollUpShards, [Settler.defaultShards, true])
    }

    /// The account changes of the run, in the accounts' transaction.
    func recordAccountsAudit(_ summary: NewAPIImportSummary) throws {
        try recordAudit(
            "import.new-api.accounts",
            [
                "groups_created": summary.groupsCreated, "users_created": summary.users.created,
                "users_updated": summary.users.updated, "users_linked": summary.users.linked,
                "users_renamed": summary.users.renamed, "users_removed": summary.users.removed,
                "access_tokens_replaced": summary.accessTokensReplaced, "tokens_created": summary.tokens.created,
                "tokens_updated": summary.tokens.updated, "tokens_linked": summary.tokens.linked,
                "tokens_removed": summary.tokens.removed, "channels_created": summary.channels.created,
                "channels_updated": summary.channels.updated, "channels_removed": summary.channels.removed,
                "redemptions_created": summary.redemptions.created,
            ])
    }

    /// One `audit_log` row of this run (its tid, actor cli) on the target's open transaction.
    private func recordAudit(_ action: String, _ counts: [String: any CustomStringConvertible]) throws {
        try AuditLog.recordChange(
            on: target, actor: Actor(userID: nil, name: "cli", tid: tid), action: action,
            target: "source:\(options.source)", before: nil, after: counts)
    }
}
