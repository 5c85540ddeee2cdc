import Foundation
import Testing

@testable import TallyCore

/// Shared sheets and helpers for the pricing tests.
enum Fixtures {
    /// The example sheet of DESIGN §3, verbatim.
    static let designSheetText = """
        effective_from: 2026-11-01T00:00:00Z
        groups:                       # group → ratio; a token's group multiplies all its prices
          default: {ratio: "1", description: "Standard"}
          vip:     {ratio: "0.8"}
          svip:    {ratio: "0.6", models: [gpt-4o, claude-sonnet-4]}   # optional: only these models
        models:
          gpt-4o:
            input: "2.50"             # per 1M tokens
            output: "10.00"
            cached_input: "1.25"
            audio_input: "40.00"
            audio_output: "80.00"
          gemini-2.5-pro:
            input: "1.25"
            output: "10.00"
            tiers:                    # price tier: applies when prompt_tokens > above_prompt_tokens
              - {above_prompt_tokens: 200000, input: "2.50", output: "15.00"}
          claude-sonnet-4:
            input: "3.00"
            output: "15.00"
            cached_input: "0.30"
            cache_write: "3.75"
            group_prices:             # a group's own price instead of ratio × base ("price difference")
              svip: {input: "2.00", output: "10.00"}
          dall-e-3:
            per_image: {"1024x1024/standard": "0.04", "1024x1792/hd": "0.12", default: "0.04"}
          veo-3:
            per_video_second: {"720p": "0.40", "1080p": "0.50"}
          suno-v4:
            per_call: "0.10"
          replicate/flux-schnell:
            per_compute_second: "0.001"       # metrics.predict_time
            per_image: {default: "0.003"}     # metrics.image_count
        """

    static let designSheet: PriceSheet = {
        do { return try PriceSheet.parse(designSheetText) } catch { fatalError("DESIGN sheet: \(error)") }
    }()

    /// The path of ops/prices/default.yaml, found from this file's location.
    static func defaultSheetPath(file: String = #filePath) -> String {
        URL(fileURLWithPath: file).resolvingSymlinksInPath().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("ops/prices/default.yaml").path
    }

    static func defaultSheetText() throws -> String {
        try String(contentsOfFile: defaultSheetPath(), encoding: .utf8)
    }

    /// A sheet with groups default (1) / vip (0.8) / double (2) and the given models YAML
    /// (indented by 2 spaces under `models:`).
    static func sheet(models: String) throws -> PriceSheet {
        let text = """
            groups:
              default: {ratio: "1"}
              vip: {ratio: "0.8"}
              double: {ratio: "2"}
            models:
            \(models)
            """
        return try PriceSheet.parse(text)
    }

    /// The problems' texts of a sheet that must be refused.
    static func problems(_ text: String) -> [String] {
        do {
            _ = try PriceSheet.parse(text)
            Issue.record("sheet was accepted but should have been refused:\n\(text)")
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }
}

/// Helpers over TallyCore's deterministic generator.
extension SplitMix64 {
    /// Uniform in 0..<bound (bound > 0).
    mutating func below(_ bound: UInt64) -> UInt64 { next() % bound }

    /// Uniform in the range.
    mutating func int(_ range: ClosedRange<Int64>) -> Int64 {
        let span = UInt64(bitPattern: range.upperBound &- range.lowerBound) &+ 1
        return range.lowerBound &+ Int64(bitPattern: span == 0 ? next() : below(span))
    }

    mutating func pick<T>(_ items: [T]) -> T { items[Int(below(UInt64(items.count)))] }

    mutating func chance(_ percent: UInt64) -> Bool { below(100) < percent }
}
