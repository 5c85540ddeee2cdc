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
    /// Source rows left out (see the warnings).
    public var skipped = 0
}

/// What a run did.
public struct NewAPIImportSummary: Sendable, Equatable {
    public var groupsCreated = 0
    public var users = ImportCounts()
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

    /// False when the run found Tally already up to date.
    public var changed: Bool {
        groupsCreated + users.created + users.updated + users.linked + tokens.created + tokens.updated + tokens.linked
            + channels.created + channels.updated + redemptions.created + redemptions.updated + logsImported
            + balanceAdjustments + tokenQuotasSet > 0
    }
}

/// Copies a new-api PostgreSQL database into Tally: groups, users, keys (hashed on the way),
/// channels, redemption codes, request logs and balances. Idempotent: `import_map` remembers
/// which source row became which Tally row, request ids are derived from log ids, and balances
/// are brought to new-api's by ledger adjustments of the difference, so a second run over an
/// unchanged source changes nothing. See docs/import.md.
///
/// Runs on two connections it does not own: `source` (only read, in a read-only session) and
/// `target` (Tally, migrated), both used from the calling thread only.
public struct NewAPIImporter {
    let source: NewAPISource
    let target: PostgresConnection
    let options: NewAPIImportOptions
    let tid: String
    let progress: @Sendable (String) -> Void

    public init(source: PostgresConnection, target: PostgresConnection, options: NewAPIImportOptions,
                progress: @escaping @Sendable (String) -> Void = { _ in }) throws {
        guard !options.source.isEmpty, options.source.utf8.count <= 40,
              options.source.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0 != ":" }) else {
            throw StoreError.invalid("the source name must be 1–40 printable ASCII characters without spaces or ':'")
        }
        self.source = try NewAPISource(connection: source)
        self.target = target
        self.options = options
        tid = TraceID.generate()
        self.progress = progress
    }

    public func run() throws -> NewAPIImportSummary {
        var summary = NewAPIImportSummary()
        try target.execute("SET client_encoding TO 'UTF8'")
        try target.execute(NewAPIImportSQL.createStaging)
        defer { try? target.execute(NewAPIImportSQL.dropStaging) }
        try importAccounts(&summary)
        try importLogs(&summary)
        try settleBalances(&summary)
        return summary
    }

    // MARK: Accounts

    /// Groups, users, keys, channels and codes from one snapshot of the source, in one Tally
    /// transaction.
    private func importAccounts(_ summary: inout NewAPIImportSummary) throws {
        progress("reading accounts")
        try source.connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        defer { try? source.connection.execute("COMMIT") }
        let groupOptions = try source.groupOptions()
        summary.groupRatios = groupOptions.ratios
        var warnings: [String] = []
        try target.transaction { target in
            try stageGroups(groupOptions)
            try stage(source.users, into: "import_users", Self.stageUser)
            try stage(source.tokens, into: "import_tokens") { try Self.stageToken($0, &$1, warnings: &warnings) }
            try stage(source.channels, into: "import_channels", Self.stageChannel)
            if let redemptions = source.redemptions { try stage(redemptions, into: "import_redemptions", Self.stageRedemption) }
            try target.execute(NewAPIImportSQL.lockAccounts)
            summary.groupsCreated = try target.query(NewAPIImportSQL.insertGroups).affectedRows
            try importUsers(&summary.users, warnings: &warnings)
            try importTokens(&summary.tokens)
            try importChannels(&summary.channels)
            try importRedemptions(&summary.redemptions)
            try target.query(NewAPIImportSQL.addLookups, [options.source])
            // Running instances forget every cached key, user, group and channel.
            try ChangeNotice.send(["import"], on: target)
        }
        summary.warnings += warnings
        if summary.tokens.skipped > 0 {
            summary.warnings.append("\(summary.tokens.skipped) key(s) skipped: their owner is not in new-api's users table")
        }
        if summary.redemptions.skipped > 0 {
            summary.warnings.append("\(summary.redemptions.skipped) redemption code(s) skipped: quota is not positive")
        }
    }

    private func importUsers(_ counts: inout ImportCounts, warnings: inout [String]) throws {
        let name = options.source
        for row in try target.query(NewAPIImportSQL.usersOutsideGroups).map({ ($0.text(0) ?? "", $0.text(1) ?? "") }) {
            warnings.append("user \(row.0): group \"\(row.1.prefix(64))\" is not a valid Tally group name; put in default")
        }
        try target.query(NewAPIImportSQL.normalizeUsers)
        counts.linked = try target.query(NewAPIImportSQL.linkUsers, [name]).affectedRows
        try insert(table: "users", staging: "import_users", condition: NewAPIImportSQL.usersToInsert,
                   NewAPIImportSQL.insertUsers, counts: &counts)
        counts.updated = try target.query(NewAPIImportSQL.updateUsers, [name]).affectedRows
        counts.skipped = try target.query("SELECT count(*) FROM import_users WHERE username = ''")[0].decode(0)
    }

    private func importTokens(_ counts: inout ImportCounts) throws {
        let name = options.source
        try target.query(NewAPIImportSQL.normalizeTokens, [name])
        counts.linked = try target.query(NewAPIImportSQL.linkTokens, [name]).affectedRows
        try insert(table: "tokens", staging: "import_tokens", condition: NewAPIImportSQL.tokensToInsert,
                   NewAPIImportSQL.insertTokens, counts: &counts)
        counts.updated = try target.query(NewAPIImportSQL.updateTokens, [name]).affectedRows
        counts.skipped = try target.query(NewAPIImportSQL.orphanTokens)[0].decode(0)
    }

    private func importChannels(_ counts: inout ImportCounts) throws {
        try insert(table: "channels", staging: "import_channels", condition: NewAPIImportSQL.channelsToInsert,
                   NewAPIImportSQL.insertChannels, counts: &counts)
        counts.updated = try target.query(NewAPIImportSQL.updateChannels, [options.source]).affectedRows
    }

    private func importRedemptions(_ counts: inout ImportCounts) throws {
        counts.created = try target.query(NewAPIImportSQL.insertRedemptions, [options.source]).affectedRows
        counts.updated = try target.query(NewAPIImportSQL.updateRedemptions, [options.source]).affectedRows
        counts.skipped = try target.query("SELECT count(*) FROM import_redemptions WHERE quota <= 0")[0].decode(0)
    }

    /// Chooses the Tally ids of the rows `condition` selects, inserts them and maps them.
    private func insert(table: String, staging: String, condition: String, _ insert: String, counts: inout ImportCounts) throws {
        let name = options.source
        try target.query(NewAPIImportSQL.makeRoom(table: table, staging: staging, where: condition), [name])
        try target.query(NewAPIImportSQL.assignIDs(table: table, staging: staging, where: condition), [name])
        counts.created = try target.query(insert, [name]).affectedRows
    }

    // MARK: Staging

    /// Streams the rows of `query` (on the source, inside its snapshot) into the staging table
    /// through `transform`, with a cursor so memory stays flat whatever the table's size.
    /// `transform` returns false to leave a row out.
    private func stage(_ query: String, into table: String, _ transform: (PostgresRow, inout CopyRow) throws -> Bool) throws {
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

    private func stageGroups(_ options: (ratios: [String: String], usable: [String: String])) throws {
        try target.copyIn("COPY import_groups (\(NewAPIImportSQL.stagingColumns["import_groups"]!)) FROM STDIN") { writer in
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
        row.append(token.isEmpty ? nil : Secrets.last6(token))
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
            warnings.append("key #\(source.text(0) ?? "?") (…\(Secrets.last6(key))): allow_ips unreadable (\(error)); imported disabled")
            allowIPs = ""
            status = 2
        }
        let limits = source.text(9) ?? ""
        row.append(source.text(0))
        row.append(source.text(1))
        row.append(truncated(source.text(2) ?? "", bytes: TokenRules.maximumNameBytes))
        row.append(SecretHash(of: "sk-" + key).postgresText)
        row.append(Secrets.last6(key))
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

    /// Columns as `NewAPISource.channels`; groups and models become arrays of the valid names.
    static func stageChannel(_ source: PostgresRow, _ row: inout CopyRow) throws -> Bool {
        let id = source.text(0) ?? "0"
        let name = (source.text(1) ?? "").trimmingCharacters(in: .whitespaces)
        let status = try source.decode(2, as: Int64.self)
        var groups = names(source.text(3), valid: GroupRules.isValidName)
        if groups.isEmpty { groups = ["default"] }
        row.append(id)
        row.append(name.isEmpty ? "channel \(id)" : String(name.prefix(200)))
        row.append((1...3).contains(status) ? status : 2)
        row.append(TextArray(groups).postgresText)
        row.append(TextArray(names(source.text(4)) { (try? ModelNames.validate([$0], field: "models")) != nil }).postgresText)
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
        row.append(Secrets.last6(code))
        for column in 3...10 { row.append(source.text(column)) }
        return true
    }

    /// The distinct non-empty names of a comma-separated list, in order.
    static func names(_ list: String?, valid: (String) -> Bool) -> [String] {
        var result: [String] = []
        for part in (list ?? "").split(separator: ",") {
            let name = part.trimmingCharacters(in: .whitespaces)
            if !name.isEmpty, valid(name), !result.contains(name) { result.append(name) }
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
    private func importLogs(_ summary: inout NewAPIImportSummary) throws {
        let stored = try target.query(NewAPIImportSQL.cursor, [options.source]).first?.decode(0, as: Int64.self) ?? 0
        var cursor = options.allLogs ? 0 : max(0, stored - options.resumeWindow)
        let last = try source.lastLogID()
        var ensuredMonths: Set<String> = []
        progress("reading logs after id \(cursor) (last \(last))")
        while true {
            let (rows, highest) = try stageLogs(after: cursor)
            guard rows > 0 else { break }
            try ensurePartitions(&ensuredMonths)
            let batch = try storeLogs(rows: rows)
            summary.logsRead += rows
            summary.logsImported += batch.imported
            summary.logsDuplicate += batch.eligible - batch.imported
            summary.logsSkipped += rows - batch.eligible
            summary.chargedQuota += batch.charged
            try target.query(NewAPIImportSQL.saveCursor, [options.source, highest])
            cursor = highest
            progress("logs: \(summary.logsRead) read, \(summary.logsImported) imported, at id \(highest) of \(last)")
            if rows < options.batchSize { break }
        }
        if summary.logsSkipped > 0 {
            summary.warnings.append("\(summary.logsSkipped) log(s) skipped: their user is not in new-api's users table")
        }
    }

    /// COPY of one batch from the source into `import_log_rows`; returns its row count and
    /// highest log id (the first field of each row).
    private func stageLogs(after cursor: Int64) throws -> (rows: Int, highest: Int64) {
        try target.execute("TRUNCATE import_log_rows")
        var rows = 0
        var highest = cursor
        try target.copyIn("COPY import_log_rows (\(NewAPIImportSQL.logColumns)) FROM STDIN") { writer in
            try source.connection.copyOut(source.logsCopy(after: cursor, limit: options.batchSize)) { bytes in
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
    /// partitioned table must not wait inside it).
    private func ensurePartitions(_ ensured: inout Set<String>) throws {
        for month in try target.query(NewAPIImportSQL.stagedMonths).map({ try $0.decode(0, as: String.self) })
        where !ensured.contains(month) {
            try target.query("SELECT tally_create_log_partitions($1, 1)", [month])
            ensured.insert(month)
        }
    }

    /// Nothing new in a batch: its transaction is rolled back, leaving no trace.
    private struct NothingNew: Error {}

    /// One batch in one transaction: new rows into `request_logs`, then users and keys debited,
    /// ledger charges, `usage_daily` — the statements of the ingest pipeline.
    private func storeLogs(rows: Int) throws -> (eligible: Int, imported: Int, charged: Int64) {
        let name = options.source
        let eligible = try target.query(NewAPIImportSQL.eligibleLogs, [name])[0].decode(0, as: Int.self)
        do {
            return try target.transaction { target in
                try target.execute(PostgresIngestRepository.createStaging)
                let batchID = try target.query(PostgresIngestRepository.insertBatch, [tid, "import", rows, 0])[0].decode(0, as: Int64.self)
                try target.query(NewAPIImportSQL.insertLogs, [name, batchID])
                let totals = try target.query(NewAPIImportSQL.freshTotals)[0]
                let imported = try totals.decode(0, as: Int.self)
                guard imported > 0 else { throw NothingNew() }
                try target.query(PostgresIngestRepository.lockUsers)
                try target.query(PostgresIngestRepository.debitUsers)
                try target.query(PostgresIngestRepository.lockTokens)
                try target.query(PostgresIngestRepository.debitTokens)
                try target.query(NewAPIImportSQL.appendLedger, [name, batchID, tid])
                try target.query(PostgresIngestRepository.upsertUsageDaily)
                try target.query(PostgresIngestRepository.finishBatch, [batchID, imported, rows - imported])
                return (eligible, imported, try totals.decode(1, as: Int64.self))
            }
        } catch is NothingNew {
            return (eligible, 0, 0)
        }
    }

    // MARK: Balances

    /// Brings each imported account's balance to new-api's with one ledger adjustment of the
    /// difference, and each key's remaining quota to new-api's; records the run in the audit log.
    private func settleBalances(_ summary: inout NewAPIImportSummary) throws {
        progress("settling balances")
        let name = options.source
        let totals = try target.transaction { target in
            try target.query(NewAPIImportSQL.lockImportedUsers, [name])
            let amounts = try target.query(NewAPIImportSQL.adjustBalances, [name, tid]).map { try $0.decode(0, as: Int64.self) }
            try target.query(NewAPIImportSQL.setBalances, [name])
            let tokenQuotas = try target.query(NewAPIImportSQL.setTokenQuotas, [name]).affectedRows
            let used = try target.query(NewAPIImportSQL.usedQuotaTotals, [name])[0]
            return (amounts, tokenQuotas, try used.decode(0, as: Int64.self), try used.decode(1, as: Int64.self))
        }
        summary.balanceAdjustments = totals.0.count
        summary.adjustedQuota = totals.0.reduce(0, +)
        summary.tokenQuotasSet = totals.1
        summary.sourceUsedQuota = totals.2
        summary.tallyUsedQuota = totals.3
        if summary.changed { try recordAudit(summary) }
    }

    private func recordAudit(_ summary: NewAPIImportSummary) throws {
        try AuditLog.recordChange(on: target, actor: Actor(userID: nil, name: "cli", tid: tid), action: "import.new-api",
                                  target: "source:\(options.source)", before: nil, after: [
                                      "users_created": summary.users.created, "users_updated": summary.users.updated,
                                      "users_linked": summary.users.linked, "tokens_created": summary.tokens.created,
                                      "tokens_updated": summary.tokens.updated, "channels_created": summary.channels.created,
                                      "logs_imported": summary.logsImported, "charged_quota": summary.chargedQuota,
                                      "balance_adjustments": summary.balanceAdjustments, "adjusted_quota": summary.adjustedQuota,
                                  ])
    }
}
