import Foundation
import Testing

@testable import TallyCore

/// Rating never goes down when any usage quantity goes up: for a random usage and a random
/// field, adding δ > 0 to that field (and, for a part of a total — cached, cache-write or audio
/// input tokens of `prompt_tokens`, audio output tokens of `completion_tokens` — to the total
/// as well, since more of a part is more usage) never costs fewer units. Holds for sheets whose
/// tiers do not get cheaper, like both sheets used here.
@Suite("Rating properties")
struct RatingPropertyTests {
    enum Field: CaseIterable {
        case prompt, completion, cached, cacheWrite, audioInput, audioOutput, images, videoSeconds, calls, predictTime
    }

    static func randomCount(_ generator: inout SplitMix64) -> Int64 {
        switch generator.below(10) {
        case 0: 0
        case 1: generator.int(0...5)
        case 2: generator.int(0...Int64.max / 4)
        case 3: generator.int(150_000...250_000)  // around gemini's tier
        default: generator.int(0...100_000)
        }
    }

    static func randomDecimal(_ generator: inout SplitMix64) -> ExactDecimal {
        let scale = Int(generator.below(13))
        let mantissa = Int128(generator.int(0...(generator.chance(10) ? 999_999_999_999_999 : 100_000)))
        return ExactDecimal(mantissa: mantissa, scale: scale) ?? .zero
    }

    static func add(_ a: ExactDecimal, _ b: ExactDecimal) -> ExactDecimal {
        ExactDecimal(mantissa: a.valueE12 + b.valueE12, scale: 12) ?? a
    }

    static func saturatingAdd(_ a: Int64, _ b: Int64) -> Int64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? Int64.max : sum
    }

    func check(sheet: PriceSheet, seed: UInt64, cases: Int) throws {
        var generator = SplitMix64(seed: seed)
        let models = sheet.modelNames
        let groups = sheet.groupNames
        var compared = 0
        var increased = 0
        for _ in 0..<cases {
            let model = generator.pick(models)
            let group = generator.pick(groups)
            guard sheet.isAvailable(model: model, group: group) else { continue }
            let prices = sheet.models[model]!.prices
            var usage = Usage(
                promptTokens: Self.randomCount(&generator), completionTokens: Self.randomCount(&generator),
                cachedTokens: generator.chance(50) ? 0 : Self.randomCount(&generator),
                cacheWriteTokens: generator.chance(70) ? 0 : Self.randomCount(&generator),
                audioInputTokens: generator.chance(70) ? 0 : Self.randomCount(&generator),
                audioOutputTokens: generator.chance(70) ? 0 : Self.randomCount(&generator),
                images: generator.chance(50) ? 0 : Self.randomCount(&generator) % 100,
                videoSeconds: Self.randomDecimal(&generator), calls: generator.int(0...3),
                predictTime: Self.randomDecimal(&generator))
            // Pick size/quality/resolution among the model's own keys so that rating succeeds.
            if let keys = prices.perImage?.keys.sorted(), let key = keys.isEmpty ? nil : generator.pick(keys) {
                let parts = key.split(separator: "/").map(String.init)
                usage.size = key == "default" ? nil : parts[0]
                usage.quality = parts.count > 1 ? parts[1] : nil
            }
            if let keys = prices.perVideoSecond?.keys.sorted(), !keys.isEmpty {
                let key = generator.pick(keys)
                usage.resolution = key == "default" ? nil : key
            }
            let before = try rate(usage, model: model, group: group, sheet: sheet)

            var after = usage
            let delta = generator.chance(20) ? generator.int(1...Int64.max / 2) : generator.int(1...300_000)
            let decimalDelta = Self.randomDecimal(&generator)
            switch generator.pick(Field.allCases) {
            case .prompt: after.promptTokens = Self.saturatingAdd(after.promptTokens, delta)
            case .completion: after.completionTokens = Self.saturatingAdd(after.completionTokens, delta)
            case .cached:
                guard Int64.max - delta >= after.promptTokens else { continue }
                after.cachedTokens = Self.saturatingAdd(after.cachedTokens, delta)
                after.promptTokens += delta
            case .cacheWrite:
                guard Int64.max - delta >= after.promptTokens else { continue }
                after.cacheWriteTokens = Self.saturatingAdd(after.cacheWriteTokens, delta)
                after.promptTokens += delta
            case .audioInput:
                guard Int64.max - delta >= after.promptTokens else { continue }
                after.audioInputTokens = Self.saturatingAdd(after.audioInputTokens, delta)
                after.promptTokens += delta
            case .audioOutput:
                guard Int64.max - delta >= after.completionTokens else { continue }
                after.audioOutputTokens = Self.saturatingAdd(after.audioOutputTokens, delta)
                after.completionTokens += delta
            case .images: after.images = Self.saturatingAdd(after.images, delta % 1000)
            case .calls: after.calls = Self.saturatingAdd(after.calls, delta)
            case .videoSeconds: after.videoSeconds = Self.add(after.videoSeconds, decimalDelta)
            case .predictTime: after.predictTime = Self.add(after.predictTime, decimalDelta)
            }
            let later = try rate(after, model: model, group: group, sheet: sheet)
            compared += 1
            if later.units > before.units { increased += 1 }
            #expect(later.units >= before.units, "\(model)/\(group): \(usage) → \(after)")
            // Failed requests never cost more than successful ones of sheets without charge_failed.
            #expect(try rate(after, model: model, group: group, failed: true, sheet: sheet).units == 0)
        }
        // The generator must actually exercise the property.
        #expect(compared > cases / 2)
        #expect(increased > compared / 5)
    }

    @Test func monotoneOnTheDesignSheet() throws {
        try check(sheet: Fixtures.designSheet, seed: 2026, cases: 3000)
    }

    @Test func monotoneOnTheDefaultSheet() throws {
        try check(sheet: try PriceSheet.parse(Fixtures.defaultSheetText()), seed: 11, cases: 3000)
    }

    /// The breakdown's exact amounts add up to the unrounded total, and rounding them once gives
    /// `units`.
    @Test func componentsAddUpToUnits() throws {
        var generator = SplitMix64(seed: 7)
        let sheet = Fixtures.designSheet
        for _ in 0..<1000 {
            let model = generator.pick(["gpt-4o", "claude-sonnet-4", "gemini-2.5-pro"])
            let group = generator.pick(["default", "vip", "svip"])
            guard sheet.isAvailable(model: model, group: group) else { continue }
            let usage = Usage(
                promptTokens: generator.int(0...400_000), completionTokens: generator.int(0...50_000),
                cachedTokens: generator.int(0...1000), cacheWriteTokens: generator.int(0...1000))
            let rating = try rate(usage, model: model, group: group, sheet: sheet, breakdown: true)
            // Sum the exact amounts as decimals with up to 37 digits: compare in units × 10^13 (enough here).
            var sumE13: Int128 = 0
            for component in rating.components {
                let parts = component.amountUnits.split(separator: ".", maxSplits: 1)
                let fraction = parts.count > 1 ? String(parts[1]) : ""
                #expect(fraction.count <= 13, "\(component.amountUnits)")
                let padded = fraction + String(repeating: "0", count: 13 - fraction.count)
                sumE13 += Int128(parts[0])! * 10_000_000_000_000 + Int128(padded)!
            }
            let (whole, rest) = sumE13.quotientAndRemainder(dividingBy: 10_000_000_000_000)
            var expected = whole + (rest * 2 >= 10_000_000_000_000 ? 1 : 0)
            if expected == 0 && sumE13 > 0 { expected = 1 }
            #expect(Int128(rating.units) == expected, "\(model)/\(group) \(usage)")
        }
    }
}
