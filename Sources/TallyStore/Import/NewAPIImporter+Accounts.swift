import TallyCore
import TallyPostgres

/// The account tables: groups, users, keys, channels and redemption codes follow new-api on every
/// run (docs/import.md, "Running it again").
extension NewAPIImporter {
    /// Groups, users, keys, channels and codes from one snapshot of the source, merged in one
    /// Tally transaction: a run leaves either all of them or none.
    func importAccounts(_ summary: inout NewAPIImportSummary) throws {
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
            try stage(source.channels, into: "import_channels") { try Self.stageChannel($0, &$1, warnings: &warnings) }
            if let redemptions = source.redemptions {
                try stage(redemptions, into: "import_redemptions", Self.stageRedemption)
            }
            try target.execute(NewAPIImportSQL.clampTimes)
            try target.execute(NewAPIImportSQL.lockAccounts)
            try target.query(NewAPIImportSQL.invalidGroupNames).forEach { row in
                let name = try row.decode(0, as: String.self), origin = try row.decode(1, as: String.self)
                warnings.append(
                    "group \"\(name.prefix(64))\" skipped: not a valid Tally group name "
                        + "([A-Za-z0-9_.-]{1,64}); named by \(origin)")
            }
            summary.groupsCreated = try target.query(NewAPIImportSQL.insertGroups).affectedRows
            try importUsers(&summary, warnings: &warnings)
            try importTokens(&summary.tokens, warnings: &warnings)
            try importChannels(&summary.channels, warnings: &warnings)
            try importRedemptions(&summary.redemptions, staged: source.redemptions != nil)
            try target.query(NewAPIImportSQL.dropLookups, [options.source])
            try target.query(NewAPIImportSQL.addLookups, [options.source])
            // Running instances forget every cached key, user, group and channel.
            try ChangeNotice.send([.import], on: target)
            // In this transaction: a run that dies later leaves its account changes recorded.
            if summary.accountChanges > 0 { try recordAccountsAudit(summary) }
        }
        summary.warnings += warnings
        for (count, warning) in [
            (summary.tokens.removed, "key(s) deleted: gone from new-api's tokens table"),
            (summary.channels.removed, "channel(s) disabled: gone from new-api's channels table"),
            (summary.redemptions.removed, "redemption code(s) disabled: gone from new-api's redemptions table"),
            (summary.redemptions.skipped, "redemption code(s) skipped: quota is not positive"),
        ] where count > 0 {
            summary.warnings.append("\(count) \(warning)")
        }
    }

    // MARK: Users

    private func importUsers(_ summary: inout NewAPIImportSummary, warnings: inout [String]) throws {
        let name = options.source
        try target.query(NewAPIImportSQL.usersOutsideGroups).forEach { row in
            let username = row.text(0) ?? "", group = row.text(1) ?? ""
            warnings.append(
                "user \(username): group \"\(group.prefix(64))\" is not a valid Tally group name; "
                    + "put in default")
        }
        try target.query(NewAPIImportSQL.normalizeUsers)
        summary.users.renamed = try settleUsernames(warnings: &warnings)
        summary.users.linked = try target.query(NewAPIImportSQL.linkUsers, [name]).affectedRows
        try suffixHeldNewUsernames(warnings: &warnings)
        try insert(
            table: "users", staging: "import_users", condition: NewAPIImportSQL.usersToInsert,
            NewAPIImportSQL.insertUsers, counts: &summary.users, warnings: &warnings)
        summary.users.updated = try target.query(NewAPIImportSQL.updateUsers, [name]).affectedRows
        summary.accessTokensReplaced = try target.query(NewAPIImportSQL.replaceAccessTokens, [name]).affectedRows
        try target.query(NewAPIImportSQL.recordAccessTokens, [name])
        for username in try target.query(NewAPIImportSQL.blockedAccessTokens, [name]).map({ $0.text(0) ?? "" }) {
            warnings.append(
                "user \(username): new-api's access token is held by another Tally account; "
                    + "the account's old token is revoked and it has none until a later run")
        }
        let disabled = try target.query(NewAPIImportSQL.disableVanishedUsers, [name]).map { $0.text(0) ?? "" }
        summary.users.removed = disabled.count
        for username in disabled {
            warnings.append("user \(username): gone from new-api's users table; disabled")
        }
        summary.users.skipped = try target.query("SELECT count(*) FROM import_users WHERE username = ''")[0].decode(0)
        if summary.users.skipped > 0 {
            warnings.append("\(summary.users.skipped) user(s) skipped: no username")
        }
    }

    /// One account whose username must change (`NewAPIImportSQL.usernameChanges`).
    private struct UsernameChange {
        let tallyID: Int64
        let sourceID: Int64
        let current: String
        /// new-api's name; nil when new-api no longer has the account.
        let wanted: String?
    }

    /// Gives every account of this source the username new-api has for it, and frees the names
    /// new-api's users want, before any user is linked or inserted, so that no two accounts ever
    /// hold one name (their lookup rows prove it at the end) and a reused name never aborts a run.
    /// Conflicts resolve the same
    /// way on every run: an account keeps its id; when its new-api name is held by an account
    /// from elsewhere (or is longer than Tally allows), or it holds a name another new-api user
    /// now has while new-api no longer has it, it is suffixed (`ImportedUsername`) with a warning.
    /// Returns the number of accounts renamed.
    private func settleUsernames(warnings: inout [String]) throws -> Int {
        let changes = try target.query(NewAPIImportSQL.usernameChanges, [options.source]).map { row in
            UsernameChange(
                tallyID: try row.decode(0), sourceID: try row.decode(1), current: try row.decode(2),
                wanted: row.text(3))
        }
        let moving = PostgresArray.integers(changes.map(\.tallyID))
        var assigned: Set<String> = []
        var renames: [(id: Int64, name: String)] = []
        for change in changes {
            let name: String
            if let wanted = change.wanted, ImportedUsername.fits(wanted),
                try !target.query(NewAPIImportSQL.usernameHeld, [wanted, moving])[0].decode(0, as: Bool.self)
            {
                name = wanted
            } else {
                name = try suffixedUsername(
                    change.wanted ?? change.current, sourceID: change.sourceID,
                    account: change.tallyID, assigned: assigned)
                let reason = Self.conflict(change.wanted)
                warnings.append("user #\(change.sourceID) (\(change.current)): \(reason); named \"\(name)\"")
            }
            assigned.insert(name)
            if name != change.current { renames.append((change.tallyID, name)) }
        }
        if !renames.isEmpty {
            try target.query(NewAPIImportSQL.vacateUsernames, [PostgresArray.integers(renames.map(\.id))])
            for rename in renames { try target.query(NewAPIImportSQL.setUsername, [rename.id, rename.name]) }
        }
        try shortenNewUsernames(assigned: &assigned, warnings: &warnings)
        return renames.count
    }

    /// Why an account cannot have the name new-api wants for it (nil: new-api no longer has it).
    private static func conflict(_ wanted: String?) -> String {
        guard let wanted else { return "new-api no longer has the account and another new-api user has its name" }
        return ImportedUsername.fits(wanted)
            ? "\"\(wanted)\" is held by another Tally account"
            : "new-api's name is too long for Tally"
    }

    /// New users whose name is longer than Tally allows come in with it cut and suffixed.
    private func shortenNewUsernames(assigned: inout Set<String>, warnings: inout [String]) throws {
        try target.query(NewAPIImportSQL.newUsersWithLongNames, [options.source]).forEach { row in
            let sourceID = try row.decode(0, as: Int64.self), long = try row.decode(1, as: String.self)
            let name = try suffixedUsername(long, sourceID: sourceID, account: nil, assigned: assigned)
            assigned.insert(name)
            try target.query(NewAPIImportSQL.setStagedUsername, [sourceID, name])
            warnings.append("user #\(sourceID): new-api's name is too long for Tally; named \"\(name)\"")
        }
    }

    /// New users whose name a Tally account holds, which was not linked (another source's, or one
    /// made in Tally since this source's first run), come in with it suffixed.
    private func suffixHeldNewUsernames(warnings: inout [String]) throws {
        var assigned: Set<String> = []
        try target.query(NewAPIImportSQL.newUsersWithHeldNames, [options.source]).forEach { row in
            let sourceID = try row.decode(0, as: Int64.self), held = try row.decode(1, as: String.self)
            let name = try suffixedUsername(held, sourceID: sourceID, account: nil, assigned: assigned)
            assigned.insert(name)
            try target.query(NewAPIImportSQL.setStagedUsername, [sourceID, name])
            warnings.append(
                "user #\(sourceID): \"\(held)\" is an existing Tally account's, which only a source's first run "
                    + "links (and only when no other source has it); named \"\(name)\"")
        }
    }

    /// `ImportedUsername.suffixed`, avoiding every name held by another account (`account`
    /// excluded), wanted by a new-api user or given in this run.
    private func suffixedUsername(
        _ base: String, sourceID: Int64, account: Int64?,
        assigned: Set<String>
    ) throws -> String {
        let others = PostgresArray.integers(account.map { [$0] } ?? [])
        return try ImportedUsername.suffixed(base, sourceID: sourceID) { candidate in
            try assigned.contains(candidate)
                || target.query(NewAPIImportSQL.usernameHeld, [candidate, others])[0].decode(0, as: Bool.self)
                || target.query(NewAPIImportSQL.usernameWanted, [candidate])[0].decode(0, as: Bool.self)
        }
    }

    // MARK: Keys, channels, codes

    private func importTokens(_ counts: inout ImportCounts, warnings: inout [String]) throws {
        let name = options.source
        try target.query(NewAPIImportSQL.normalizeTokens, [name])
        counts.linked = try target.query(NewAPIImportSQL.linkTokens, [name]).affectedRows
        try insert(
            table: "tokens", staging: "import_tokens", condition: NewAPIImportSQL.tokensToInsert,
            NewAPIImportSQL.insertTokens, counts: &counts, warnings: &warnings)
        counts.updated = try target.query(NewAPIImportSQL.updateTokens, [name]).affectedRows
        counts.removed = try target.query(NewAPIImportSQL.removeVanishedTokens, [name]).affectedRows
        let orphans = try target.query(NewAPIImportSQL.orphanTokens)[0].decode(0, as: Int.self)
        let held = try target.query(NewAPIImportSQL.keysHeldElsewhere, [name])[0].decode(0, as: Int.self)
        counts.skipped = orphans + held
        if orphans > 0 { warnings.append("\(orphans) key(s) skipped: their owner is not in new-api's users table") }
        if held > 0 {
            warnings.append("\(held) key(s) skipped: the same key is another Tally account's, or another source's")
        }
        let blocked = try target.query(NewAPIImportSQL.blockedKeyRotations, [name])[0].decode(0, as: Int.self)
        if blocked > 0 {
            warnings.append(
                "\(blocked) key(s) not rotated: new-api's new key is another Tally key's; the old key is "
                    + "disabled until a later run can rotate it")
        }
    }

    private func importChannels(_ counts: inout ImportCounts, warnings: inout [String]) throws {
        try insert(
            table: "channels", staging: "import_channels", condition: NewAPIImportSQL.channelsToInsert,
            NewAPIImportSQL.insertChannels, counts: &counts, warnings: &warnings)
        counts.updated = try target.query(NewAPIImportSQL.updateChannels, [options.source]).affectedRows
        counts.removed = try target.query(NewAPIImportSQL.disableVanishedChannels, [options.source]).affectedRows
    }

    private func importRedemptions(_ counts: inout ImportCounts, staged: Bool) throws {
        func changed(_ statement: String, wasEnabled: Bool) throws -> Int {
            let rows = try target.query(statement, [options.source]).map {
                (id: try $0.decode(0, as: Int64.self), status: try $0.decode(1, as: Int.self))
            }
            let disabled = rows.filter { $0.status == RedemptionStatus.disabled.rawValue }.map(\.id)
            if !disabled.isEmpty {
                try target.query(
                    NewAPIImportSQL.recordCodesDisabled, [PostgresArray.integers(disabled), tid, wasEnabled])
            }
            return rows.count
        }
        try target.query(NewAPIImportSQL.linkRedemptions, [options.source])
        counts.created = try changed(NewAPIImportSQL.insertRedemptions, wasEnabled: false)
        counts.updated = try changed(NewAPIImportSQL.updateRedemptions, wasEnabled: true)
        if staged { counts.removed = try changed(NewAPIImportSQL.disableVanishedRedemptions, wasEnabled: true) }
        counts.skipped = try target.query("SELECT count(*) FROM import_redemptions WHERE quota <= 0")[0].decode(0)
    }

    /// Chooses the Tally ids of the rows `condition` selects, inserts them and maps them.
    private func insert(
        table: String, staging: String, condition: String, _ insert: String,
        counts: inout ImportCounts, warnings: inout [String]
    ) throws {
        let name = options.source
        try target.query(NewAPIImportSQL.makeRoom(table: table, staging: staging))
        try target.query(NewAPIImportSQL.assignIDs(table: table, staging: staging, where: condition), [name])
        let renumbered = try target.query(NewAPIImportSQL.renumbered(staging: staging, where: condition), [name])
            .map { $0.text(0) ?? "" }
        if !renumbered.isEmpty {
            warnings.append(
                "\(renumbered.count) \(table) row(s) of new-api got another id, theirs being taken in Tally: "
                    + renumbered.prefix(20).joined(separator: ", ") + (renumbered.count > 20 ? ", …" : "")
                    + " (import_map lists them; gateway lines and New-Api-User headers must name the new ids)")
        }
        counts.created = try target.query(insert, [name]).affectedRows
    }
}
