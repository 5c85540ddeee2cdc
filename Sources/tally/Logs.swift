import ArgumentParser
import Foundation
import TallyCore
import TallyStore

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Synthetic accounts and request logs for tests and benchmarks.",
        subcommands: [Generate.self, Seed.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gen",
            abstract: "Write realistic gateway log lines (NDJSON) to standard output, or to a file and say so.",
            discussion: "Keys are those of `tally logs seed`; the same --seed gives the same lines.")

        @Option(help: "How many lines.") var lines = 1000
        @Option(help: "How many distinct users (synthetic-1…N).") var users = 100
        @Option(help: "Comma-separated models (must be priced).") var models: String?
        @Option(help: "Fraction of lines that repeat an earlier line (0…1).") var dupRate = 0.0
        @Option(help: "Fraction of bad lines (0…1).") var badRate = 0.0
        @Option(help: "User distribution: zipf or uniform.") var skew = "zipf"
        @Option(help: "Random seed.") var seed: UInt64 = 42
        @Option(help: "First timestamp (RFC 3339 or YYYY-MM-DD). Default: --span-hours before now.") var start: String?
        @Option(help: "Hours the lines spread over, from --start.") var spanHours = 24.0
        @Option(help: "Write to this file instead of standard output.") var out: String?

        func validate() throws {
            guard lines >= 0, users > 0 else { throw ValidationError("--lines must be ≥ 0 and --users > 0") }
            guard spanHours >= 0, spanHours.isFinite else { throw ValidationError("--span-hours must be ≥ 0") }
            guard (0...1).contains(dupRate), (0...1).contains(badRate), dupRate + badRate <= 1 else {
                throw ValidationError("--dup-rate and --bad-rate must be within 0…1 and add up to at most 1")
            }
            guard LogGenerator.Skew(rawValue: skew) != nil else {
                throw ValidationError("--skew must be zipf or uniform")
            }
        }

        func run() throws {
            var options = LogGenerator.Options()
            options.lines = lines
            options.users = users
            if let models { options.models = models.split(separator: ",").map(String.init) }
            options.duplicateRate = dupRate
            options.badRate = badRate
            options.skew = LogGenerator.Skew(rawValue: skew)!
            options.seed = seed
            options.span = spanHours * 3600
            // By default the lines end now, so they fall in the current month and price version.
            options.start = try start.map(TimeArgument.parse) ?? Date().addingTimeInterval(-options.span)
            var generator = LogGenerator(options)
            let output = try OutputFile(path: out)
            var buffer = ""
            buffer.reserveCapacity(1 << 20)
            do {
                while let line = generator.next() {
                    buffer += line
                    buffer += "\n"
                    if buffer.utf8.count >= 1 << 20 {
                        try output.write(Data(buffer.utf8))
                        buffer.removeAll(keepingCapacity: true)
                    }
                }
                try output.write(Data(buffer.utf8))
                try output.commit()
            } catch {
                output.discard()
                throw error
            }
            if let out, output.file != nil {
                // Standard output is free: say what was written, and for when.
                let format = ISO8601DateFormatter()
                let (first, end) = (options.start, options.start + options.span)
                print("wrote \(lines) lines to \(out) (\(format.string(from: first)) … \(format.string(from: end)))")
            }
        }
    }

    struct Seed: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the synthetic users synthetic-1…N with well-known keys (tests and benchmarks only).")

        @OptionGroup var database: DatabaseOptions
        @Option(help: "How many users.") var users = 100
        @Option(help: "Initial balance of each, in units.") var quota: Int64 = 1_000_000_000_000
        @Flag(help: "Seed even though the database has other users (the keys are public: never in production).")
        var force = false

        func validate() throws {
            guard (1...10_000_000).contains(users) else { throw ValidationError("--users must be within 1…10000000") }
            guard quota >= 0 else { throw ValidationError("--quota cannot be negative") }
        }

        func run() async throws {
            let pool = try await database.migratedPool(size: 1)
            let others = try await pool.withConnection { connection in
                try connection.query("SELECT count(*) FROM users WHERE username NOT LIKE 'synthetic-%' AND role < 100")[
                    0
                ].decode(0, as: Int.self)
            }
            guard others == 0 || force else {
                throw ValidationError(
                    "this database has \(others) real users; synthetic keys are public, so refusing (use --force on a test database)"
                )
            }
            let created = try await SyntheticAccounts.seed(users: users, quota: quota, on: pool)
            print("created \(created) synthetic users (\(users - created) existed)")
            await pool.close()
        }
    }
}
