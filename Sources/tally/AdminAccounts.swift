import ArgumentParser
import Foundation
import TallyCore
import TallyPostgres
import TallyStore

// `tally admin …`: the System API's admin operations for operators and scripts, on the same
// repositories (and so the same validation, audit rows and ledger rows) as the HTTP routes.
// Every command audits as actor "cli"; `--json` prints one JSON object on stdout.

/// Runs `body` on a migrated pool (`readOnly`: one already current, for a listing) and closes
/// it. A refusal by the store (bad input, not found, conflict, permission) is printed as one
/// line on stderr and exits 1.
func withAdminPool(
    _ database: DatabaseOptions, readOnly: Bool = false, _ body: (PostgresPool) async throws -> Void
) async throws {
    let pool = try await readOnly ? database.currentPool(size: 2) : database.migratedPool(size: 2)
    var refusal: String?
    do {
        try await body(pool)
    } catch let error as StoreError {
        refusal = error.description
    } catch let error as RuleViolation {
        refusal = error.message
    } catch let error as PermissionDenied {
        refusal = error.reason
    } catch {
        await pool.close()
        throw error
    }
    await pool.close()
    if let refusal {
        FileHandle.standardError.write(Data("error: \(refusal)\n".utf8))
        throw ExitCode.failure
    }
}

/// One JSON object from ordered key/value pairs (values already JSON text).
func jsonObject(_ pairs: [(String, String)]) -> String {
    "{" + pairs.map { "\(JSONText.quote($0.0)):\($0.1)" }.joined(separator: ",") + "}"
}

/// Unix seconds from `-1`/`never`, a unix time, or an RFC 3339 / ISO 8601 time.
func parseExpiry(_ text: String) throws -> Int64 {
    if text == "never" || text == "-1" { return -1 }
    if let seconds = Int64(text) { return seconds }
    let formatter = ISO8601DateFormatter()
    for options: ISO8601DateFormatter.Options in [
        [.withInternetDateTime, .withFractionalSeconds], [.withInternetDateTime], [.withFullDate],
    ] {
        formatter.formatOptions = options
        if let date = formatter.date(from: text) { return Int64(date.timeIntervalSince1970) }
    }
    throw ValidationError(
        "--expires must be 'never', a unix time in seconds, or a time like 2026-12-31T00:00:00Z; got \"\(text)\"")
}

struct CreateKey: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create-key",
        abstract: "Create an API key for a user and print it (shown once, stored hashed).")

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Owner's user id.")
    var user: Int64

    @Option(help: "Key name (at most 50 bytes).")
    var name: String

    @Option(
        help:
            "Group of the key: a selectable group or the owner's own (authorize refuses any other); default: the owner's group."
    )
    var group = ""

    @Option(help: "Quota of the key in units (500,000 = 1 USD).")
    var quota: Int64?

    @Flag(help: "No quota limit on the key (the account's balance still applies).")
    var unlimited = false

    @Option(help: "Only these models, comma-separated.")
    var models: String?

    @Option(name: .customLong("allow-ips"), help: "Only from these IPs / CIDRs (IPv4 or IPv6), comma-separated.")
    var allowIPs = ""

    @Option(help: "Expiry: 'never' (default), a unix time, or RFC 3339 (2026-12-31T00:00:00Z).")
    var expires = "never"

    @Option(help: "Requests per minute for this key (default: its group's limit).")
    var rpmLimit: Int?

    @Flag(help: "Print one JSON object {\"id\",\"key\"}.")
    var json = false

    func validate() throws {
        if unlimited && quota != nil { throw ValidationError("--quota and --unlimited exclude each other") }
        if !unlimited && quota == nil { throw ValidationError("give --quota UNITS or --unlimited") }
    }

    func run() async throws {
        let draft = TokenDraft(
            name: name, expiredTime: try parseExpiry(expires), remainQuota: quota ?? 0,
            unlimitedQuota: unlimited, modelLimitsEnabled: models != nil, modelLimits: models ?? "",
            allowIPs: allowIPs, group: group, rpmLimit: rpmLimit)
        try await withAdminPool(database) { pool in
            let (token, key) = try await TokenRepository(pool: pool).create(
                userID: user, draft, by: .cli)
            if json {
                print(jsonObject([("id", String(token.id)), ("key", JSONText.quote(key))]))
            } else {
                print("created API key \(token.id) (\(token.name)) for user \(token.userID)")
                print("key (shown once): \(key)")
            }
        }
    }
}

struct TopUp: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topup",
        abstract: "Credit a user's balance (a ledger row); with --idempotency-key a repeat credits nothing.",
        discussion: """
            Without --idempotency-key one is made and printed to standard error before the credit: \
            if the command fails without saying whether it committed (a lost connection), run it \
            again with that key and it credits at most once.
            """)

    @OptionGroup var database: DatabaseOptions

    @Option(help: "User id.")
    var user: Int64

    @Option(help: "Quota units to credit (500,000 = 1 USD).")
    var amount: Int64

    @Option(help: "Why (kept in the ledger and the audit log).")
    var reason = ""

    @Option(help: "A key that makes the top-up happen at most once (same key, same answer).")
    var idempotencyKey: String?

    @Flag(help: "Print one JSON object {\"id\",\"user_id\",\"amount\",\"quota\",\"replayed\"}.")
    var json = false

    func run() async throws {
        let key = idempotencyKey ?? "cli-\(UUID().uuidString.lowercased())"
        if idempotencyKey == nil {
            FileHandle.standardError.write(Data("tally admin topup: idempotency key \(key) (to retry safely)\n".utf8))
        }
        try await withAdminPool(database) { pool in
            let result = try await BalanceRepository(pool: pool).topUp(
                userID: user, amount: amount, reason: reason, idempotencyKey: key, by: .cli)
            if json {
                print(
                    jsonObject([
                        ("id", String(result.id)), ("user_id", String(result.userID)),
                        ("amount", String(result.amount)), ("quota", String(result.quota)),
                        ("replayed", String(result.replayed)),
                    ]))
            } else if result.replayed {
                print(
                    "already done: top-up \(result.id) credited \(result.amount) to user \(result.userID); nothing credited now"
                )
            } else {
                print(
                    "credited \(result.amount) to user \(result.userID); balance \(result.quota) (ledger row \(result.id))"
                )
            }
        }
    }
}

/// `suspend` and `enable`: the account status (keys stop or resume working at once).
enum SetUserStatus {
    static func run(_ database: DatabaseOptions, user: Int64, action: ManageAction, json: Bool) async throws {
        try await withAdminPool(database) { pool in
            let updated = try await AccountRepository(pool: pool).manage(id: user, action, actorRole: nil, by: .cli)
            if json {
                print(
                    jsonObject([
                        ("id", String(updated.id)), ("status", String(updated.status.rawValue)),
                        ("role", String(updated.role.rawValue)),
                    ]))
            } else {
                print(
                    "user \(updated.id) (\(updated.username)) is now \(updated.status == .enabled ? "enabled" : "suspended")"
                )
            }
        }
    }
}

struct Suspend: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Suspend a user: the System API and every key answer account_suspended.")

    @OptionGroup var database: DatabaseOptions
    @Option(help: "User id.") var user: Int64
    @Flag(help: "Print one JSON object {\"id\",\"status\",\"role\"}.") var json = false

    func run() async throws { try await SetUserStatus.run(database, user: user, action: .disable, json: json) }
}

struct Enable: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Enable a suspended user again.")

    @OptionGroup var database: DatabaseOptions
    @Option(help: "User id.") var user: Int64
    @Flag(help: "Print one JSON object {\"id\",\"status\",\"role\"}.") var json = false

    func run() async throws { try await SetUserStatus.run(database, user: user, action: .enable, json: json) }
}

struct ChannelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "channel", abstract: "Channels: which groups they serve and which models they offer.",
        subcommands: [Add.self, Disable.self, EnableChannel.self, List.self])

    static func printChannel(_ channel: Channel, json: Bool) {
        if json {
            print(
                jsonObject([
                    ("id", String(channel.id)), ("name", JSONText.quote(channel.name)),
                    ("status", String(channel.status.rawValue)),
                    ("group", JSONText.quote(channel.groups.joined(separator: ","))),
                    ("models", JSONText.quote(channel.models.joined(separator: ","))),
                ]))
        } else {
            print(
                "channel \(channel.id) \(channel.name): status \(channel.status.rawValue), groups \(channel.groups.joined(separator: ",")), models \(channel.models.joined(separator: ","))"
            )
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a channel.")

        @OptionGroup var database: DatabaseOptions
        @Option(help: "Name.") var name: String
        @Option(help: "Groups it serves, comma-separated (each must exist).") var group = "default"
        @Option(help: "Models it offers, comma-separated.") var models = ""
        @Flag(help: "Print one JSON object.") var json = false

        func run() async throws {
            let draft = ChannelDraft(
                name: name, groups: group.split(separator: ",").map(String.init),
                models: models.split(separator: ",").map(String.init))
            try await withAdminPool(database) { pool in
                ChannelCommand.printChannel(try await ChannelRepository(pool: pool).create(draft, by: .cli), json: json)
            }
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Disable a channel (its models leave the groups it served).")

        @OptionGroup var database: DatabaseOptions
        @Option(help: "Channel id.") var id: Int64
        @Flag(help: "Print one JSON object.") var json = false

        func run() async throws {
            try await withAdminPool(database) { pool in
                ChannelCommand.printChannel(
                    try await ChannelRepository(pool: pool).update(id: id, ChannelChanges(status: .disabled), by: .cli),
                    json: json)
            }
        }
    }

    struct EnableChannel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "enable", abstract: "Enable a channel.")

        @OptionGroup var database: DatabaseOptions
        @Option(help: "Channel id.") var id: Int64
        @Flag(help: "Print one JSON object.") var json = false

        func run() async throws {
            try await withAdminPool(database) { pool in
                ChannelCommand.printChannel(
                    try await ChannelRepository(pool: pool).update(id: id, ChannelChanges(status: .enabled), by: .cli),
                    json: json)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List channels (one JSON object per line with --json).")

        @OptionGroup var database: DatabaseOptions
        @Flag(help: "One JSON object per channel.") var json = false

        func run() async throws {
            try await withAdminPool(database, readOnly: true) { pool in
                let repository = ChannelRepository(pool: pool)
                var page = PageRequest(page: 1, size: 100)
                while true {
                    let result = try await repository.list(page: page)
                    result.items.forEach { ChannelCommand.printChannel($0, json: json) }
                    if result.items.count < page.size { break }
                    page.page += 1
                }
            }
        }
    }
}

struct GroupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "group", abstract: "Groups: who may pick them for keys, and their rate limits.",
        subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a group.")

        @OptionGroup var database: DatabaseOptions
        @Option(help: "Name (letters, digits, '_', '.', '-').") var name: String
        @Option(help: "Description.") var description = ""
        @Flag(help: "Users cannot pick it for their own keys (admins assign it).") var notSelectable = false
        @Option(help: "Requests per minute per key (a key's own limit comes first).") var rpmLimit: Int?
        @Option(help: "Requests per minute per user and model.") var modelRpmLimit: Int?
        @Flag(help: "Print one JSON object.") var json = false

        func run() async throws {
            try await withAdminPool(database) { pool in
                let group = try await GroupRepository(pool: pool).create(
                    name: name, description: description, selectable: !notSelectable, rpmLimit: rpmLimit,
                    modelRPMLimit: modelRpmLimit, by: .cli)
                if json {
                    print(jsonObject([("name", JSONText.quote(group.name)), ("selectable", String(group.selectable))]))
                } else {
                    print("created group \(group.name)")
                }
            }
        }
    }
}

struct RedemptionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redemption", abstract: "Redemption codes (single use, shown once, stored hashed).",
        subcommands: [Create.self, Disable.self, EnableCode.self])

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Disable an unused code (a leaked batch: one run per id); it can be enabled again.")

        @OptionGroup var database: DatabaseOptions
        @Option(help: "The code's id (the admin list shows it).") var id: Int64

        func run() async throws { try await RedemptionCommand.setStatus(database, id: id, enabled: false) }
    }

    struct EnableCode: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "enable", abstract: "Enable a disabled code again.")

        @OptionGroup var database: DatabaseOptions
        @Option(help: "The code's id.") var id: Int64

        func run() async throws { try await RedemptionCommand.setStatus(database, id: id, enabled: true) }
    }

    static func setStatus(_ database: DatabaseOptions, id: Int64, enabled: Bool) async throws {
        try await withAdminPool(database) { pool in
            let code = try await BalanceRepository(pool: pool).setRedemptionStatus(id: id, enabled: enabled, by: .cli)
            print("redemption code \(code.id) (…\(code.codeLast6)) \(enabled ? "enabled" : "disabled")")
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create codes and print them.")

        @OptionGroup var database: DatabaseOptions
        @Option(help: "Name of the batch (1–20 characters).") var name: String
        @Option(help: "How many codes (1–100).") var count = 1
        @Option(help: "Quota units each code credits (500,000 = 1 USD).") var quota: Int64
        @Option(help: "Expiry: 'never' (default), a unix time, or RFC 3339.") var expires = "never"
        @Flag(help: "Print one JSON object {\"codes\":[…]}.") var json = false

        func run() async throws {
            let expiry = try parseExpiry(expires)
            try await withAdminPool(database) { pool in
                let codes = try await BalanceRepository(pool: pool).createRedemptions(
                    name: name, count: count, quota: quota, expiredTime: expiry == -1 ? 0 : expiry, by: .cli)
                if json {
                    print(jsonObject([("codes", "[" + codes.map(JSONText.quote).joined(separator: ",") + "]")]))
                } else {
                    codes.forEach { print($0) }
                }
            }
        }
    }
}
