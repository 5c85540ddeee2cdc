import ArgumentParser
import Foundation
import TallyCore
import TallyPostgres
import TallyStore

struct Prices: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load and list price versions.",
        subcommands: [Load.self, List.self])

    struct Load: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load a price sheet (YAML or JSON) as a new price version.",
            discussion: "The sheet is validated first; nothing is stored if any problem is found. Use - to read standard input.")

        @OptionGroup var database: DatabaseOptions

        @Argument(help: "Path of the sheet, or - for standard input.")
        var file: String

        @Option(help: "When the version takes effect (RFC 3339). Default: the sheet's effective_from, else now.")
        var effectiveFrom: String?

        @Flag(help: "Print the stored version as JSON.")
        var json = false

        func run() async throws {
            let text = try SheetSource.read(file)
            let sheet: PriceSheet
            do { sheet = try PriceSheet.parse(text) } catch {
                throw ValidationError("\(file) is not a valid price sheet:\n\(error)")
            }
            let effective = try effectiveFrom.map(TimeArgument.parse)
            let pool = try await database.migratedPool(size: 1)
            let stored = try await PostgresPriceRepository(pool: pool).load(sheet, effectiveFrom: effective, source: file, by: .cli)
            if json {
                print(try PriceVersionJSON.encode(stored.info))
            } else {
                print("loaded price version \(stored.version.id): \(sheet.models.count) models, \(sheet.groups.count) groups, effective from \(PostgresTimestamp.format(stored.version.effectiveFrom))")
            }
            await pool.close()
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List price versions, oldest effective first.")

        @OptionGroup var database: DatabaseOptions

        @Flag(help: "Print a JSON array.")
        var json = false

        func run() async throws {
            let pool = try await database.migratedPool(size: 1)
            let versions = try await PostgresPriceRepository(pool: pool).all()
            if json {
                print(try PriceVersionJSON.encode(versions.map(\.info)))
            } else if versions.isEmpty {
                print("no price versions; load one with: tally prices load ops/prices/default.yaml")
            } else {
                for stored in versions {
                    print("\(stored.version.id)\t\(PostgresTimestamp.format(stored.version.effectiveFrom))\t\(stored.version.sheet.models.count) models\t\(stored.loadedBy)\t\(stored.source)")
                }
            }
            await pool.close()
        }
    }
}

/// One JSON line per version, snake_case as the HTTP API.
enum PriceVersionJSON {
    static func encode(_ infos: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(infos), as: UTF8.self)
    }
}

enum SheetSource {
    static func read(_ path: String) throws -> String {
        if path == "-" {
            return String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read \(path)")
        }
        return String(decoding: data, as: UTF8.self)
    }
}

enum TimeArgument {
    /// RFC 3339 (`2026-11-01T00:00:00Z`), or a date (`2026-11-01`, midnight UTC).
    static func parse(_ text: String) throws -> Date {
        let candidate = text.count == 10 ? text + " 00:00:00+00" : text
        guard let date = PostgresTimestamp.parse(candidate) else {
            throw ValidationError("expected a time like 2026-11-01T12:00:00Z, got \"\(text)\"")
        }
        return date
    }
}
