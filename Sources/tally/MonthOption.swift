import ArgumentParser
import TallyCore

/// A month given on the command line (`--month`, `--from`), with `UsageMonth.parse`'s one
/// message as a usage error.
func monthOption(_ text: String, name: String) throws -> UsageMonth {
    do { return try UsageMonth.parse(text, field: name) } catch { throw ValidationError(error.message) }
}
