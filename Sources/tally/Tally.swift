import ArgumentParser

@main
struct Tally: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tally",
        abstract: "Usage metering and billing backend of an LLM API relay.",
        discussion: """
            Every command that touches the database reads DATABASE_URL (libpq conninfo or postgres:// URI). \
            When it is not set, Tally starts (or reuses) the embedded PostgreSQL under .tally/ via ops/pg.
            """,
        subcommands: [
            Serve.self, Migrate.self, Partitions.self, Prices.self, Quote.self, Ingest.self, Import.self, Audit.self,
            Logs.self, Admin.self,
            Export.self, StatementCommand.self, Retention.self, Bench.self,
        ])
}
