import ArgumentParser
import Foundation
import TallyCore
import TallyPostgres
import TallyStore

struct Quote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Price a request with the price version in force (the same code as ingest).",
        discussion: "Example: tally quote --model gpt-4o --group vip --prompt-tokens 1000 --completion-tokens 500")

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Model name as in the price sheet.") var model: String
    @Option(help: "Group whose ratio or group prices apply.") var group = "default"
    @Option(help: "All input tokens (includes cached, cache-write and audio input).") var promptTokens: Int64 = 0
    @Option(help: "All output tokens (includes audio output).") var completionTokens: Int64 = 0
    @Option(help: "Input tokens read from cache.") var cachedTokens: Int64 = 0
    @Option(help: "Input tokens written to cache.") var cacheWriteTokens: Int64 = 0
    @Option(help: "Audio input tokens.") var audioInputTokens: Int64 = 0
    @Option(help: "Audio output tokens.") var audioOutputTokens: Int64 = 0
    @Option(help: "Images generated.") var images: Int64 = 0
    @Option(help: "Image size, e.g. 1024x1024.") var size: String?
    @Option(help: "Image quality, e.g. hd.") var quality: String?
    @Option(help: "Video seconds (decimal).") var videoSeconds = "0"
    @Option(help: "Video resolution, e.g. 1080p.") var resolution: String?
    @Option(help: "Calls (per-call models).") var calls: Int64 = 0
    @Option(help: "Compute seconds (decimal), Replicate-style predict_time.") var predictTime = "0"
    @Option(
        help: ArgumentHelp(
            "The request's kind, as a log line's kind: \(RequestKind.allCases.map(\.rawValue).joined(separator: ", ")) (default: the model's).",
            valueName: "kind"))
    var kind: RequestKind?
    @Flag(help: "Rate as a failed request (status ≥ 400).") var failed = false
    @Option(help: "Price at this time (RFC 3339); default now.") var at: String?
    @Option(help: "Price with this sheet (a file, - or an http(s):// URL) instead of the stored versions.") var sheet:
        String?
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard sheet == nil || at == nil else {
            throw ValidationError("--at picks a stored price version; with --sheet there is only the sheet")
        }
    }

    func run() async throws {
        let usage = Usage(
            promptTokens: promptTokens, completionTokens: completionTokens, cachedTokens: cachedTokens,
            cacheWriteTokens: cacheWriteTokens, audioInputTokens: audioInputTokens,
            audioOutputTokens: audioOutputTokens,
            images: images, size: size, quality: quality, videoSeconds: try decimal(videoSeconds, "--video-seconds"),
            resolution: resolution, calls: calls, predictTime: try decimal(predictTime, "--predict-time"))
        if let negative = usage.firstNegativeField {
            throw ValidationError("--\(negative.replacingOccurrences(of: "_", with: "-")) cannot be negative")
        }
        // Ingest's checks around rating, in its order: what it refuses is not priced here either.
        let limits = UsageLimits()
        let version: Int64?
        let rating: Rating
        do {
            try limits.checkQuantities(usage)
            let (id, priceSheet) = try await selectSheet()
            version = id
            try UsageLimits.checkMeasured(usage, of: model, as: kind, failed: failed, sheet: priceSheet)
            rating = try rate(usage, model: model, group: group, failed: failed, sheet: priceSheet, breakdown: true)
            try limits.checkCost(rating)
        } catch let rejection as IngestRejection {
            throw ValidationError(rejection.description)
        } catch let error as RatingError {
            throw ValidationError(error.description)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let detail = String(decoding: try encoder.encode(rating), as: UTF8.self)
            print(
                #"{"model":\#(JSONText.quote(model)),"group":\#(JSONText.quote(group)),"price_version_id":\#(version.map(String.init) ?? "null"),"units":\#(rating.units),"usd":"\#(rating.usd)","rating":\#(detail)}"#
            )
        } else {
            print(rating.explainText(model: model, group: group))
            print(version.map { "price version \($0)" } ?? "price sheet \(SheetSource.recordable(sheet ?? ""))")
        }
    }

    private func selectSheet() async throws -> (Int64?, PriceSheet) {
        if let sheet {
            do {
                return (nil, try PriceSheet.parse(try await SheetSource.read(sheet, timeout: .seconds(30)).text))
            } catch let error as PriceSheetError {
                throw ValidationError("\(SheetSource.recordable(sheet)) is not a valid price sheet:\n\(error)")
            }
        }
        // Whole microseconds, as ingest stores a line's created_at (at a version's boundary a
        // finer fraction would pick the other version).
        let time = LogLine.storedInstant(try at.map(TimeArgument.parse) ?? Date())
        let pool = try await database.currentPool(size: 1)
        let versions = try await PostgresPriceRepository(pool: pool).all().map(\.version)
        await pool.close()
        guard let version = PriceBook(versions: versions).version(at: time) else {
            throw ValidationError(
                "no price version is in force at \(PostgresTimestamp.format(time)); load one with tally prices load")
        }
        return (version.id, version.sheet)
    }

    private func decimal(_ text: String, _ flag: String) throws -> ExactDecimal {
        do { return try ExactDecimal(text) } catch { throw ValidationError("\(flag): \(error)") }
    }
}

extension RequestKind: ExpressibleByArgument {}
