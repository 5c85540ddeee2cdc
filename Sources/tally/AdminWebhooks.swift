import ArgumentParser
import Foundation
import TallyCore
import TallyPostgres
import TallyStore

/// `tally admin webhook …`: endpoints and balance thresholds (docs/webhooks.md).
struct WebhookCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "webhook",
        abstract: "Webhook endpoints (signed POSTs of balance, suspension and export events) and balance thresholds.",
        discussion: """
            Events: \(WebhookEventType.allCases.map(\.rawValue).joined(separator: ", ")). Every `tally serve` \
            instance delivers them from a durable outbox (see --webhooks on serve); docs/webhooks.md explains \
            the payloads and how a receiver verifies X-Tally-Signature.
            """,
        subcommands: [Add.self, List.self, Remove.self, Threshold.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add an endpoint. Its signing secret is generated and printed once unless given.")

        @OptionGroup var database: DatabaseOptions
        @Option(help: "http:// or https:// URL the events are POSTed to.") var url: String
        @Option(help: "Event types it receives, comma-separated. Default: every type.") var events = ""
        @Option(help: "Free text shown by list.") var description = ""
        @Option(
            name: .customLong("secret-env"),
            help:
                "Read the signing secret (16–256 characters) from this environment variable instead of generating one; it is never printed."
        )
        var secretEnvironment: String?
        @Flag(help: "Print one JSON object {\"id\",\"url\",\"events\",\"secret\"} (secret only when generated).")
        var json = false

        func run() async throws {
            let given = try secretEnvironment.map { name in
                guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
                    throw ValidationError("environment variable \(name) is not set")
                }
                return WebhookSecret(value)
            }
            try await withAdminPool(database) { pool in
                let types = try WebhookRules.parseEvents(events)
                let (endpoint, secret) = try await WebhookRepository(pool: pool).add(
                    url: url, secret: given, events: types, description: description, by: .cli)
                let shown = given == nil ? secret.value : nil
                if json {
                    print(
                        jsonObject([
                            ("id", String(endpoint.id)), ("url", JSONText.quote(endpoint.url)),
                            ("events", WebhookCommand.eventsJSON(endpoint.events)),
                            ("secret", shown.map(JSONText.quote) ?? "null"),
                        ]))
                } else {
                    print(
                        "added webhook \(endpoint.id): \(endpoint.url) (\(WebhookCommand.eventsText(endpoint.events)))")
                    if let shown { print("signing secret (shown once): \(shown)") }
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List endpoints with their pending, delivered and dead-lettered deliveries (never their secrets)."
        )

        @OptionGroup var database: DatabaseOptions
        @Flag(help: "One JSON object per endpoint.") var json = false

        func run() async throws {
            try await withAdminPool(database, readOnly: true) { pool in
                let repository = WebhookRepository(pool: pool)
                for endpoint in try await repository.list() {
                    if json {
                        print(
                            jsonObject([
                                ("id", String(endpoint.id)), ("url", JSONText.quote(endpoint.url)),
                                ("events", WebhookCommand.eventsJSON(endpoint.events)),
                                ("description", JSONText.quote(endpoint.description)),
                                ("pending", String(endpoint.pending)),
                                ("delivered", String(endpoint.delivered)), ("dead", String(endpoint.dead)),
                            ]))
                    } else {
                        print(
                            "webhook \(endpoint.id) \(endpoint.url): \(WebhookCommand.eventsText(endpoint.events)); pending \(endpoint.pending), delivered \(endpoint.delivered), dead \(endpoint.dead)\(endpoint.description.isEmpty ? "" : " — " + endpoint.description)"
                        )
                    }
                }
                if !json {
                    print("low-balance threshold: \(try await repository.globalLowBalanceThreshold()) units (global)")
                }
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove an endpoint: its secret is erased and its undelivered events are dropped.")

        @OptionGroup var database: DatabaseOptions
        @Option(help: "Endpoint id.") var id: Int64

        func run() async throws {
            try await withAdminPool(database) { pool in
                try await WebhookRepository(pool: pool).remove(id: id, by: .cli)
                print("removed webhook \(id)")
            }
        }
    }

    struct Threshold: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set the low-balance threshold (balance.low) globally or for one user.",
            discussion: """
                balance.low is sent when an ingested batch takes a balance from above the threshold to at or \
                below it; balance.exhausted when it takes it from above 0 to 0 or below. A user's own threshold \
                wins over the global one (default 500000 units = 1 USD); 0 turns balance.low off.
                """)

        @OptionGroup var database: DatabaseOptions
        @Option(help: "Threshold in quota units (500,000 = 1 USD).") var units: Int64?
        @Option(help: "Only this user's threshold. Default: the global one.") var user: Int64?
        @Flag(help: "Clear the user's own threshold, so the global one applies (needs --user).") var clear = false

        func validate() throws {
            if clear && units != nil { throw ValidationError("--units and --clear exclude each other") }
            if !clear && units == nil { throw ValidationError("give --units N, or --clear with --user") }
            if clear && user == nil {
                throw ValidationError("--clear needs --user (the global threshold is set to 0 to turn it off)")
            }
        }

        func run() async throws {
            try await withAdminPool(database) { pool in
                try await WebhookRepository(pool: pool).setLowBalanceThreshold(units: units, user: user, by: .cli)
                let scope = user.map { "user \($0)" } ?? "global"
                print(
                    units.map { "low-balance threshold (\(scope)): \($0) units" }
                        ?? "low-balance threshold (\(scope)): cleared, the global one applies")
            }
        }
    }

    static func eventsText(_ events: [WebhookEventType]) -> String {
        events.isEmpty ? "every event" : events.map(\.rawValue).joined(separator: ",")
    }

    static func eventsJSON(_ events: [WebhookEventType]) -> String {
        "[" + events.map { JSONText.quote($0.rawValue) }.joined(separator: ",") + "]"
    }
}
