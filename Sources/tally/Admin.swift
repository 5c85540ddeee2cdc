import ArgumentParser
import Foundation
import TallyCore
import TallyStore

struct Admin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Administrative operations on the same database (audited as actor \"cli\").",
        subcommands: [
            CreateUser.self, CreateKey.self, TopUp.self, Suspend.self, Enable.self,
            ChannelCommand.self, GroupCommand.self, RedemptionCommand.self, WebhookCommand.self,
        ])
}

struct CreateUser: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create-user",
        abstract: "Create a user and print its system access token (shown once, stored hashed).")

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Login name (1–64 characters, unique).")
    var username: String

    @Flag(help: "Make the user root (role 100).")
    var root = false

    @Flag(help: "Make the user an admin (role 10).")
    var admin = false

    @Option(help: "Group of the user.")
    var group = "default"

    @Option(help: "Initial balance in quota units (500,000 = 1 USD).")
    var quota: Int64 = 0

    @Flag(help: "Print one JSON object {\"id\",\"username\",\"access_token\"}.")
    var json = false

    func validate() throws {
        if root && admin { throw ValidationError("--root and --admin exclude each other") }
        if quota < 0 { throw ValidationError("--quota cannot be negative") }
    }

    func run() async throws {
        let role: Role = root ? .root : (admin ? .admin : .user)
        try await withAdminPool(database) { pool in
            let (user, token) = try await AccountRepository(pool: pool)
                .create(NewUser(username: username, role: role, group: group, quota: quota), actorRole: nil, by: .cli)
            if json {
                print(
                    #"{"id":\#(user.id),"username":\#(JSONText.quote(user.username)),"access_token":\#(JSONText.quote(token))}"#
                )
            } else {
                print("created user \(user.id) (\(user.username)), role \(user.role.rawValue)")
                print("access token (shown once): \(token)")
            }
        }
    }
}
