import ArgumentParser
import Foundation
import TallyCore
import TallyHTTP
import TallyPostgres
import TallyStore

struct Prices: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Load and list price versions.",
        subcommands: [Load.self, List.self])

    struct Load: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Load a price sheet (YAML or JSON) as a new price version.",
            discussion: """
                The sheet is validated first; nothing is stored if any problem is found. Use - to read standard input. \
                An http:// or https:// URL is downloaded (redirects followed, at most 16 MiB; any status but 2xx is \
                an error) and recorded as the version's source, without its credentials or query string.
                """)

        @OptionGroup var database: DatabaseOptions

        @Argument(help: "Path of the sheet, - for standard input, or an http(s):// URL to download it from.")
        var file: String

        @Option(help: "Seconds allowed to download a sheet from a URL.")
        var timeout = 30

        @Option(help: "When the version takes effect (RFC 3339). Default: the sheet's effective_from, else now.")
        var effectiveFrom: String?

        @Flag(help: "Print the stored version as JSON.")
        var json = false

        func run() async throws {
            let (text, source) = try await SheetSource.read(file, timeout: .seconds(timeout))
            let sheet: PriceSheet
            do { sheet = try PriceSheet.parse(text) } catch {
                throw ValidationError("\(source) is not a valid price sheet:\n\(error)")
            }
            let effective = try effectiveFrom.map(TimeArgument.parse)
            let pool = try await database.migratedPool(size: 1)
            let stored = try await PostgresPriceRepository(pool: pool).load(
                sheet, effectiveFrom: effective, source: source, by: .cli)
            if json {
                print(try PriceVersionJSON.encode(stored.info))
            } else {
                print(
                    "loaded price version \(stored.version.id): \(sheet.models.count) models, \(sheet.groups.count) groups, effective from \(PostgresTimestamp.format(stored.version.effectiveFrom))"
                )
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
            let pool = try await database.currentPool(size: 1)
            let versions = try await PostgresPriceRepository(pool: pool).all()
            if json {
                print(try PriceVersionJSON.encode(versions.map(\.info)))
            } else if versions.isEmpty {
                print("no price versions; load one with: tally prices load ops/prices/default.yaml")
            } else {
                for stored in versions {
                    print(
                        "\(stored.version.id)\t\(PostgresTimestamp.format(stored.version.effectiveFrom))\t\(stored.version.sheet.models.count) models\t\(stored.loadedBy)\t\(stored.source)"
                    )
                }
            }
            await pool.close()
        }
    }
}

/// One JSON line per version, with the names of the HTTP API (`PriceVersionInfo.CodingKeys`).
enum PriceVersionJSON {
    static func encode(_ infos: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(infos), as: UTF8.self)
    }
}

enum SheetSource {
    /// Largest sheet accepted from a URL.
    static let maxDownloadBytes = 16 << 20

    /// The sheet's text and the source to record: the path, `-`, or the URL without its
    /// credentials, query and fragment (they may hold tokens).
    static func read(_ path: String, timeout: Duration) async throws -> (text: String, source: String) {
        if isURL(path) {
            return (try await download(path, timeout: timeout), recordable(path))
        }
        if path == "-" {
            return (String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self), path)
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read \(path)")
        }
        return (String(decoding: data, as: UTF8.self), path)
    }

    private static func download(_ url: String, timeout: Duration) async throws -> String {
        let response: HTTPClient.Response
        do {
            response = try await HTTPClient().send(
                HTTPClient.Request(
                    url: url, headers: [("Accept", "application/yaml, application/json;q=0.9, */*;q=0.5")],
                    connectTimeout: .seconds(10), timeout: timeout, maxResponseBytes: maxDownloadBytes,
                    followRedirects: true))
        } catch let error as HTTPClientError {
            throw ValidationError("cannot download the price sheet: \(error)")
        }
        guard response.isSuccess else {
            throw ValidationError(
                "cannot download the price sheet: GET \(recordable(url)) answered HTTP \(response.status)")
        }
        return response.text
    }

    /// An http(s) URL, downloaded; anything else is a path or `-`.
    private static func isURL(_ source: String) -> Bool {
        let lowercased = source.lowercased()
        return lowercased.hasPrefix("http://") || lowercased.hasPrefix("https://")
    }

    /// A URL without its credentials, query and fragment; any other source as it is.
    static func recordable(_ url: String) -> String {
        guard isURL(url) else { return url }
        guard var components = URLComponents(string: url) else { return URLOrigin.of(url) }
        components.user = nil
        components.password = nil
        components.query = nil
        components.fragment = nil
        return components.string ?? URLOrigin.of(url)
    }
}

enum TimeArgument {
    /// RFC 3339 (`2026-11-01T00:00:00Z`), or a date (`2026-11-01`, midnight UTC).
    static func parse(_ text: String) throws -> Date {
        guard let date = OperatorTime.parse(text, dateOnly: true) else {
            throw ValidationError("expected a time like 2026-11-01T12:00:00Z, got \"\(text)\"")
        }
        return date
    }
}
