import Foundation
import Testing

@testable import TallyCore

private func units(
    _ usage: Usage, _ model: String, _ group: String = "default", failed: Bool = false,
    sheet: PriceSheet = Fixtures.designSheet
) throws -> Int64 {
    try rate(usage, model: model, group: group, failed: failed, sheet: sheet).units
}

@Suite("Rating goldens (DESIGN sheet)")
struct RatingGoldenTests {
    @Test func gpt4oDefault() throws {
        #expect(try units(Usage(promptTokens: 1000, completionTokens: 500), "gpt-4o") == 3750)
    }

    @Test func gpt4oVIP() throws {
        #expect(try units(Usage(promptTokens: 1000, completionTokens: 500), "gpt-4o", "vip") == 3000)
    }

    @Test func twoPromptTokensRoundHalfUp() throws {
        // 2 × 2.50 / 1M USD = 2.5 units → 3.
        #expect(try units(Usage(promptTokens: 2), "gpt-4o") == 3)
    }

    @Test func geminiTier() throws {
        // 250,000 × 2.50 + 1,000 × 15.00 per 1M = 0.64 USD = 320,000 units.
        let rating = try rate(
            Usage(promptTokens: 250_000, completionTokens: 1000), model: "gemini-2.5-pro",
            group: "default", sheet: Fixtures.designSheet)
        #expect(rating.units == 320_000)
        #expect(rating.tierAbove == 200_000)
    }

    @Test func veo3() throws {
        #expect(try units(Usage(videoSeconds: ExactDecimal(Int64(8)), resolution: "1080p"), "veo-3") == 2_000_000)
    }
}

@Suite("Rating rules")
struct RatingRuleTests {
    let sheet = Fixtures.designSheet

    // MARK: tokens

    @Test func cachedTokensAtTheirOwnPrice() throws {
        // 600 uncached × 2.50 + 400 cached × 1.25 per 1M = 0.0015 + 0.0005 USD = 1000 units.
        #expect(try units(Usage(promptTokens: 1000, cachedTokens: 400), "gpt-4o") == 1000)
    }

    @Test func cachedFallsBackToInput() throws {
        // gemini-2.5-pro has no cached_input: 1000 × 1.25 per 1M whatever the cache says.
        #expect(try units(Usage(promptTokens: 1000, cachedTokens: 1000), "gemini-2.5-pro") == 625)
        #expect(try units(Usage(promptTokens: 1000), "gemini-2.5-pro") == 625)
    }

    @Test func cacheWriteAtItsOwnPrice() throws {
        // claude-sonnet-4: 200 × 3.00 + 300 × 0.30 + 500 × 3.75 per 1M = 0.0006 + 0.00009 + 0.001875 = 0.002565 USD.
        #expect(
            try units(Usage(promptTokens: 1000, cachedTokens: 300, cacheWriteTokens: 500), "claude-sonnet-4") == 1283)
    }

    @Test func cacheWriteFallsBackToInput() throws {
        // gpt-4o has no cache_write: 1000 × 2.50 per 1M = 1250 units.
        #expect(try units(Usage(promptTokens: 1000, cacheWriteTokens: 1000), "gpt-4o") == 1250)
    }

    @Test func audioTokens() throws {
        // gpt-4o: 100 audio in × 40 + 900 text in × 2.50 + 50 audio out × 80 + 150 text out × 10 per 1M
        // = 0.004 + 0.00225 + 0.004 + 0.0015 = 0.01175 USD = 5875 units.
        let usage = Usage(promptTokens: 1000, completionTokens: 200, audioInputTokens: 100, audioOutputTokens: 50)
        #expect(try units(usage, "gpt-4o") == 5875)
    }

    @Test func audioFallsBackToInputAndOutput() throws {
        // claude-sonnet-4 has no audio prices: same as plain tokens.
        let audio = Usage(promptTokens: 1000, completionTokens: 100, audioInputTokens: 1000, audioOutputTokens: 100)
        #expect(
            try units(audio, "claude-sonnet-4")
                == units(Usage(promptTokens: 1000, completionTokens: 100), "claude-sonnet-4"))
        #expect(try units(audio, "claude-sonnet-4") == 2250)
    }

    @Test func partsLargerThanPromptClampTheRestAtZero() throws {
        // cached 1000 > prompt 10: the 1000 cached are billed, the rest is 0, not negative.
        #expect(try units(Usage(promptTokens: 10, cachedTokens: 1000), "gpt-4o") == 625)
        #expect(try units(Usage(completionTokens: 10, audioOutputTokens: 1000), "gpt-4o") == 40_000)
    }

    @Test func negativeQuantitiesCountAsZero() throws {
        #expect(try units(Usage(promptTokens: -1000, completionTokens: 500), "gpt-4o") == 2500)
        #expect(try units(Usage(promptTokens: 1000, cachedTokens: -500), "gpt-4o") == 1250)
    }

    // MARK: tiers

    @Test func tierBoundaryIsStrictlyAbove() throws {
        let atThreshold = try rate(
            Usage(promptTokens: 200_000), model: "gemini-2.5-pro", group: "default", sheet: sheet)
        #expect(atThreshold.units == 125_000)  // 200,000 × 1.25 per 1M = 0.25 USD
        #expect(atThreshold.tierAbove == nil)
        let above = try rate(Usage(promptTokens: 200_001), model: "gemini-2.5-pro", group: "default", sheet: sheet)
        #expect(above.tierAbove == 200_000)
        #expect(above.units == 250_001)  // 200,001 × 2.50 per 1M = 250,001.25 units
    }

    @Test func highestTierWinsAndReplacesOnlyWhatItNames() throws {
        let tiered = try Fixtures.sheet(
            models: """
                  m:
                    input: "1"
                    output: "2"
                    tiers:
                      - {above_prompt_tokens: 100, input: "3"}
                      - {above_prompt_tokens: 1000, input: "5"}
                """)
        // prompt 2000 > 1000: input 5 (highest tier), output stays 2 (no tier names it).
        // 2000 × 5 + 1000 × 2 per 1M = 0.012 USD = 6000 units.
        let rating = try rate(
            Usage(promptTokens: 2000, completionTokens: 1000), model: "m", group: "default", sheet: tiered)
        #expect(rating.units == 6000)
        #expect(rating.tierAbove == 1000)
        // prompt 500: first tier, input 3: 500 × 3 + 1000 × 2 per 1M = 0.0035 USD.
        #expect(try units(Usage(promptTokens: 500, completionTokens: 1000), "m", sheet: tiered) == 1750)
        // prompt 50: base.
        #expect(try units(Usage(promptTokens: 50, completionTokens: 1000), "m", sheet: tiered) == 1025)
    }

    // MARK: images

    @Test func imageBySizeAndQuality() throws {
        // 2 × 0.12 USD = 120,000 units.
        #expect(try units(Usage(images: 2, size: "1024x1792", quality: "hd"), "dall-e-3") == 120_000)
        #expect(try units(Usage(images: 1, size: "1024x1024", quality: "standard"), "dall-e-3") == 20_000)
    }

    @Test func imageFallsBackToSizeThenDefault() throws {
        let images = try Fixtures.sheet(
            models: """
                  img:
                    per_image: {"1024x1024": "0.05", "1024x1024/hd": "0.08", default: "0.01"}
                  strict:
                    per_image: {"1024x1024": "0.05"}
                """)
        #expect(try units(Usage(images: 1, size: "1024x1024", quality: "hd"), "img", sheet: images) == 40_000)
        #expect(try units(Usage(images: 1, size: "1024x1024", quality: "standard"), "img", sheet: images) == 25_000)
        #expect(try units(Usage(images: 1, size: "1024x1024"), "img", sheet: images) == 25_000)
        #expect(try units(Usage(images: 3, size: "512x512", quality: "hd"), "img", sheet: images) == 15_000)
        #expect(try units(Usage(images: 1), "img", sheet: images) == 5_000)
        #expect(throws: RatingError.sizeNotSupported(size: "512x512", quality: "hd")) {
            try units(Usage(images: 1, size: "512x512", quality: "hd"), "strict", sheet: images)
        }
        #expect(throws: RatingError.sizeNotSupported(size: nil, quality: nil)) {
            try units(Usage(images: 1), "strict", sheet: images)
        }
    }

    @Test func dallE3UnknownSizeUsesDefault() throws {
        #expect(try units(Usage(images: 1, size: "256x256"), "dall-e-3") == 20_000)
    }

    @Test func zeroImagesNeedNoPriceKey() throws {
        let images = try Fixtures.sheet(
            models: """
                  strict:
                    per_image: {"1024x1024": "0.05"}
                """)
        #expect(try units(Usage(images: 0, size: "9x9"), "strict", sheet: images) == 0)
    }

    // MARK: video

    @Test func videoByResolution() throws {
        #expect(try units(Usage(videoSeconds: ExactDecimal(Int64(5)), resolution: "720p"), "veo-3") == 1_000_000)
        // 8.5 s × 0.40 = 3.4 USD.
        #expect(try units(Usage(videoSeconds: try ExactDecimal("8.5"), resolution: "720p"), "veo-3") == 1_700_000)
    }

    @Test func videoUnknownResolutionIsRefused() throws {
        #expect(throws: RatingError.resolutionNotSupported("4k")) {
            try units(Usage(videoSeconds: ExactDecimal(Int64(8)), resolution: "4k"), "veo-3")
        }
        #expect(throws: RatingError.resolutionNotSupported(nil)) {
            try units(Usage(videoSeconds: ExactDecimal(Int64(8))), "veo-3")
        }
    }

    @Test func videoDefaultResolution() throws {
        let video = try Fixtures.sheet(
            models: """
                  v:
                    per_video_second: {"1080p": "0.50", default: "0.10"}
                """)
        #expect(try units(Usage(videoSeconds: ExactDecimal(Int64(10)), resolution: "4k"), "v", sheet: video) == 500_000)
        #expect(try units(Usage(videoSeconds: ExactDecimal(Int64(10))), "v", sheet: video) == 500_000)
        #expect(
            try units(Usage(videoSeconds: ExactDecimal(Int64(10)), resolution: "1080p"), "v", sheet: video) == 2_500_000
        )
    }

    // MARK: calls, compute

    @Test func perCallOnlyCountsZeroCallsAsOne() throws {
        #expect(try units(Usage(), "suno-v4") == 50_000)
        #expect(try units(Usage(calls: 1), "suno-v4") == 50_000)
        #expect(try units(Usage(calls: 3), "suno-v4") == 150_000)
    }

    @Test func perCallWithOtherPricesDoesNotInventACall() throws {
        let mixed = try Fixtures.sheet(
            models: """
                  tool:
                    input: "1"
                    per_call: "0.01"
                """)
        #expect(try units(Usage(promptTokens: 1000), "tool", sheet: mixed) == 500)
        #expect(try units(Usage(promptTokens: 1000, calls: 2), "tool", sheet: mixed) == 10_500)
    }

    @Test func replicateComputeAndImages() throws {
        // 2.5 s × 0.001 + 1 × 0.003 = 0.0055 USD = 2750 units.
        let usage = Usage(images: 1, predictTime: try ExactDecimal("2.5"))
        #expect(try units(usage, "replicate/flux-schnell") == 2750)
        #expect(try units(Usage(predictTime: try ExactDecimal("2.5")), "replicate/flux-schnell") == 1250)
    }

    // MARK: groups

    @Test func groupRatioMultipliesTheSum() throws {
        let rating = try rate(
            Usage(promptTokens: 1000, completionTokens: 500), model: "claude-sonnet-4", group: "vip",
            sheet: sheet)
        // (1000 × 3 + 500 × 15) per 1M = 0.0105 USD = 5250 units × 0.8 = 4200.
        #expect(rating.units == 4200)
        #expect(rating.groupRatio == (try ExactDecimal("0.8")))
        #expect(!rating.groupPriceApplied)
    }

    @Test func groupPricesReplaceRatio() throws {
        let rating = try rate(
            Usage(promptTokens: 1000, completionTokens: 500), model: "claude-sonnet-4", group: "svip",
            sheet: sheet)
        // Own price, no 0.6 ratio: 1000 × 2 + 500 × 10 per 1M = 0.007 USD = 3500 units.
        #expect(rating.units == 3500)
        #expect(rating.groupPriceApplied)
        #expect(rating.groupRatio == .one)
    }

    @Test func groupPricesKeepUnnamedBasePricesWithoutRatio() throws {
        // svip names input/output only; cached_input stays 0.30 and no ratio: 1000 × 0.30 per 1M = 150.
        #expect(try units(Usage(promptTokens: 1000, cachedTokens: 1000), "claude-sonnet-4", "svip") == 150)
        #expect(try units(Usage(promptTokens: 1000, cachedTokens: 1000), "claude-sonnet-4", "default") == 150)
        #expect(try units(Usage(promptTokens: 1000, cachedTokens: 1000), "claude-sonnet-4", "vip") == 120)
    }

    @Test func groupPricesWinOverTiers() throws {
        let both = try Fixtures.sheet(
            models: """
                  m:
                    input: "1"
                    output: "1"
                    tiers:
                      - {above_prompt_tokens: 10, input: "4", output: "4"}
                    group_prices:
                      vip: {input: "2"}
                """)
        // prompt 100 > 10: tier input 4 / output 4; vip names input 2, which wins; output stays tier 4.
        // 100 × 2 + 100 × 4 per 1M = 0.0006 USD = 300 units, no ratio.
        let rating = try rate(Usage(promptTokens: 100, completionTokens: 100), model: "m", group: "vip", sheet: both)
        #expect(rating.units == 300)
        #expect(rating.tierAbove == 10)
        #expect(rating.groupPriceApplied)
        #expect(try units(Usage(promptTokens: 100, completionTokens: 100), "m", "default", sheet: both) == 400)
    }

    @Test func groupPriceMapsReplaceWholeMaps() throws {
        let images = try Fixtures.sheet(
            models: """
                  img:
                    per_image: {"1024x1024": "0.05", default: "0.04"}
                    group_prices:
                      vip: {per_image: {default: "0.03"}}
                """)
        #expect(try units(Usage(images: 1, size: "1024x1024"), "img", "vip", sheet: images) == 15_000)
        #expect(try units(Usage(images: 1, size: "1024x1024"), "img", "default", sheet: images) == 25_000)
    }

    @Test func unknownModelGroupAndMembership() {
        #expect(throws: RatingError.unknownModel("gpt-9")) { try units(Usage(promptTokens: 1), "gpt-9") }
        #expect(throws: RatingError.unknownGroup("gold")) { try units(Usage(promptTokens: 1), "gpt-4o", "gold") }
        #expect(throws: RatingError.modelNotInGroup(model: "gemini-2.5-pro", group: "svip")) {
            try units(Usage(promptTokens: 1), "gemini-2.5-pro", "svip")
        }
        #expect(throws: RatingError.modelNotInGroup(model: "gemini-2.5-pro", group: "svip")) {
            try units(Usage(), "gemini-2.5-pro", "svip", failed: true)
        }
        #expect(Fixtures.designSheet.isAvailable(model: "gpt-4o", group: "svip"))
        #expect(!Fixtures.designSheet.isAvailable(model: "veo-3", group: "svip"))
    }

    @Test func ratingErrorDescriptions() {
        #expect(RatingError.unknownModel("gpt-9").description == #"unknown model "gpt-9""#)
        #expect(RatingError.unknownGroup("gold").description == #"unknown group "gold""#)
        #expect(
            RatingError.modelNotInGroup(model: "m", group: "g").description
                == #"model "m" is not available in group "g""#)
        #expect(
            RatingError.sizeNotSupported(size: "512x512", quality: "hd").description
                == #"size not supported: size "512x512", quality "hd""#)
        #expect(
            RatingError.resolutionNotSupported("4k").description == #"size not supported: resolution "4k""#)
    }

    // MARK: failed requests

    @Test func failedRequestsAreFreeWithoutChargeFailed() throws {
        let rating = try rate(
            Usage(promptTokens: 1000, completionTokens: 500), model: "gpt-4o", group: "default",
            failed: true, sheet: sheet)
        #expect(rating.units == 0)
        #expect(rating.failed)
        #expect(try units(Usage(), "suno-v4", failed: true) == 0)
    }

    @Test func chargeFailedTimesRatio() throws {
        let failing = try Fixtures.sheet(
            models: """
                  m:
                    input: "1"
                    charge_failed: "0.01"
                    group_prices:
                      double: {input: "1", charge_failed: "0.002"}
                """)
        // 0.01 USD = 5000 units, whatever the usage.
        #expect(try units(Usage(promptTokens: 1_000_000), "m", failed: true, sheet: failing) == 5000)
        #expect(try units(Usage(), "m", "vip", failed: true, sheet: failing) == 4000)
        // The group's own charge_failed, no ratio.
        #expect(try units(Usage(), "m", "double", failed: true, sheet: failing) == 1000)
        // Not failed: charge_failed is not added.
        #expect(try units(Usage(promptTokens: 1000), "m", sheet: failing) == 500)
    }

    // MARK: rounding, minimum, overflow

    @Test func roundsHalfUpOnceOnTheTotal() throws {
        let prices = try Fixtures.sheet(
            models: """
                  half:
                    input: "21"
                    output: "1"
                  under:
                    input: "20.999998"
                  halves:
                    input: "1"
                    output: "1"
                  quarter:
                    input: "2.50"
                """)
        // 1 token × 21 per 1M = 10.5 units → 11.
        #expect(try units(Usage(promptTokens: 1), "half", sheet: prices) == 11)
        // 10.499999 → 10.
        #expect(try units(Usage(promptTokens: 1), "under", sheet: prices) == 10)
        // ratio 0.8 applies to the sum before rounding: 10.5 × 0.8 = 8.4 → 8 (rounding first would give 11 × 0.8 = 8.8 → 9).
        #expect(try units(Usage(promptTokens: 1), "half", "vip", sheet: prices) == 8)
        // 0.5 + 0.5 units from two components = 1 unit, not 1 + 1.
        #expect(try units(Usage(promptTokens: 1, completionTokens: 1), "halves", sheet: prices) == 1)
        #expect(try units(Usage(completionTokens: 1), "half", sheet: prices) == 1)
        // 10.5 + 0.5 = 11 (rounding each component would give 11 + 1 = 12).
        #expect(try units(Usage(promptTokens: 1, completionTokens: 1), "half", sheet: prices) == 11)
        // Ratio 2: 10.5 × 2 = 21; (10.5 + 1) × 2 = 23.
        #expect(try units(Usage(promptTokens: 1), "half", "double", sheet: prices) == 21)
        #expect(try units(Usage(promptTokens: 1, completionTokens: 2), "half", "double", sheet: prices) == 23)
        // 1.25 × 2 = 2.5 → 3, where rounding before the ratio would give 1 × 2 = 2.
        #expect(try units(Usage(promptTokens: 1), "quarter", "double", sheet: prices) == 3)
    }

    @Test func oneUnitMinimum() throws {
        let prices = try Fixtures.sheet(
            models: """
                  tiny:
                    input: "0.000002"
                  free:
                    input: "0"
                """)
        // 1 token × 0.000002 per 1M = 0.000001 units → 1.
        #expect(try units(Usage(promptTokens: 1), "tiny", sheet: prices) == 1)
        #expect(try units(Usage(promptTokens: 1), "tiny", "vip", sheet: prices) == 1)
        #expect(try units(Usage(), "tiny", sheet: prices) == 0)
        #expect(try units(Usage(promptTokens: 1_000_000), "free", sheet: prices) == 0)
        // A millionth of a second of veo-3 at 720p: 0.2 units → 1.
        #expect(try units(Usage(videoSeconds: try ExactDecimal("0.000001"), resolution: "720p"), "veo-3") == 1)
    }

    @Test func hugeUsageIsExactOrCapped() throws {
        // Int64.max / 2 tokens × 1.25 units = 5764607523034234878.75 → …879, exact.
        let half = Int64.max / 2
        let exact = try rate(Usage(promptTokens: half), model: "gpt-4o", group: "default", sheet: sheet)
        #expect(exact.units == 5_764_607_523_034_234_879)
        #expect(!exact.capped)
        let capped = try rate(
            Usage(
                promptTokens: Int64.max, completionTokens: Int64.max, cachedTokens: Int64.max,
                cacheWriteTokens: Int64.max, audioInputTokens: Int64.max, audioOutputTokens: Int64.max),
            model: "gpt-4o", group: "default", sheet: sheet)
        #expect(capped.units == Int64.max)
        #expect(capped.capped)
        let video = try rate(
            Usage(videoSeconds: try ExactDecimal("999999999999999999.999999999999"), resolution: "1080p"),
            model: "veo-3", group: "vip", sheet: sheet)
        #expect(video.units == Int64.max && video.capped)
        #expect(try units(Usage(images: Int64.max, size: "1024x1792", quality: "hd"), "dall-e-3") == Int64.max)
        #expect(try units(Usage(calls: Int64.max), "suno-v4", "vip") == Int64.max)
    }

    @Test func extremePricesDoNotOverflow() throws {
        let extreme = try PriceSheet.parse(
            """
            groups:
              big: {ratio: "999999999999999999.999999999999"}
              small: {ratio: "0.000000000001"}
            models:
              m:
                input: "999999999999999999.999999999999"
                per_video_second: {default: "999999999999999999.999999999999"}
                per_compute_second: "0.000000000001"
            """)
        let big = try rate(
            Usage(promptTokens: Int64.max, videoSeconds: try ExactDecimal("999999999999999999.999999999999")),
            model: "m", group: "big", sheet: extreme)
        #expect(big.units == Int64.max && big.capped)
        // 1e-12 USD/s × 1e-12 s × 1e-12 ratio: tiny but positive → 1 unit.
        #expect(try units(Usage(predictTime: try ExactDecimal("0.000000000001")), "m", "small", sheet: extreme) == 1)
        // 1e18 tokens × ~1e18 USD per 1M tokens × 1e-12 ratio ≈ 5e23 units → capped.
        #expect(try units(Usage(promptTokens: 1_000_000_000_000_000_000), "m", "small", sheet: extreme) == Int64.max)
    }

    @Test func justBelowAndAtTheCap() throws {
        let prices = try Fixtures.sheet(
            models: """
                  unit:
                    per_call: "0.000002"
                """)
        // per_call 0.000002 USD = exactly 1 unit per call.
        #expect(try units(Usage(calls: Int64.max), "unit", sheet: prices) == Int64.max)
        let atCap = try rate(Usage(calls: Int64.max), model: "unit", group: "default", sheet: prices)
        #expect(!atCap.capped)
        let over = try rate(Usage(calls: Int64.max), model: "unit", group: "double", sheet: prices)
        #expect(over.capped && over.units == Int64.max)
        #expect(try units(Usage(calls: Int64.max - 1), "unit", sheet: prices) == Int64.max - 1)
    }

    // MARK: breakdown

    @Test func breakdownOnlyWhenAsked() throws {
        let usage = Usage(promptTokens: 1000, completionTokens: 500, cachedTokens: 200)
        let quick = try rate(usage, model: "gpt-4o", group: "vip", sheet: sheet)
        #expect(quick.components.isEmpty)
        let full = try rate(usage, model: "gpt-4o", group: "vip", sheet: sheet, breakdown: true)
        #expect(full.units == quick.units)
        #expect(
            full.components == [
                RatingComponent(
                    name: "input", quantity: "800", per: "1M tokens", unitPriceUSD: "2.5", amountUnits: "800"),
                RatingComponent(
                    name: "cached_input", quantity: "200", per: "1M tokens", unitPriceUSD: "1.25", amountUnits: "100"),
                RatingComponent(
                    name: "output", quantity: "500", per: "1M tokens", unitPriceUSD: "10", amountUnits: "2000"),
            ])
        // 800 + 100 + 2000 = 2900.
        #expect(full.units == 2900)
    }

    @Test func breakdownNamesImageVideoCallCompute() throws {
        let image = try rate(
            Usage(images: 2, size: "1024x1792", quality: "hd"), model: "dall-e-3", group: "default",
            sheet: sheet, breakdown: true)
        #expect(image.components.map(\.name) == ["image 1024x1792/hd"])
        #expect(image.components.first?.amountUnits == "120000")
        let video = try rate(
            Usage(videoSeconds: try ExactDecimal("0.3"), resolution: "720p"), model: "veo-3",
            group: "vip", sheet: sheet, breakdown: true)
        #expect(
            video.components == [
                RatingComponent(
                    name: "video 720p", quantity: "0.3", per: "second",
                    unitPriceUSD: "0.4", amountUnits: "48000")
            ])
        let call = try rate(Usage(), model: "suno-v4", group: "default", sheet: sheet, breakdown: true)
        #expect(call.components.map(\.name) == ["call"])
        let compute = try rate(
            Usage(images: 1, predictTime: try ExactDecimal("0.0003")), model: "replicate/flux-schnell",
            group: "vip", sheet: sheet, breakdown: true)
        #expect(compute.components.map(\.name) == ["image default", "compute"])
        #expect(compute.components.map(\.amountUnits) == ["1200", "0.12"])
        #expect(compute.units == 1200)
    }

    @Test func explainText() throws {
        let rating = try rate(
            Usage(promptTokens: 1000, completionTokens: 500), model: "gpt-4o", group: "vip",
            sheet: sheet, breakdown: true)
        #expect(
            rating.explainText(model: "gpt-4o", group: "vip") == """
                gpt-4o, group vip (ratio 0.8)
                  input   1000 × 2.5 USD per 1M tokens = 1000 units
                  output   500 × 10 USD per 1M tokens = 2000 units
                total 3000 units = 0.006000 USD
                """)
        let failed = try rate(
            Usage(), model: "claude-sonnet-4", group: "svip", failed: true, sheet: sheet, breakdown: true)
        #expect(
            failed.explainText(model: "claude-sonnet-4", group: "svip") == """
                claude-sonnet-4, group svip (group prices), failed request
                total 0 units = 0.000000 USD
                """)
    }

    @Test func ratingIsCodable() throws {
        let rating = try rate(
            Usage(promptTokens: 250_000), model: "gemini-2.5-pro", group: "vip", sheet: sheet,
            breakdown: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = String(decoding: try encoder.encode(rating), as: UTF8.self)
        #expect(
            json
                == #"{"capped":false,"components":[{"amount_units":"250000","name":"input","per":"1M tokens","quantity":"250000","unit_price_usd":"2.5"}],"failed":false,"group_price_applied":false,"group_ratio":"0.8","tier_above":200000,"units":250000}"#
        )
        #expect(try JSONDecoder().decode(Rating.self, from: Data(json.utf8)) == rating)
    }

    @Test func modelLimits() throws {
        let dalle = try #require(try PriceSheet.parse(Fixtures.defaultSheetText()).models["dall-e-3"])
        #expect(dalle.limits.violation(promptChars: 4000, n: 1, size: "1024x1024") == nil)
        #expect(dalle.limits.violation(promptChars: 4001) == .promptTooLong)
        #expect(dalle.limits.violation(n: 2) == .nNotWithinRange)
        #expect(dalle.limits.violation(n: 0) == .nNotWithinRange)
        #expect(dalle.limits.violation(size: "512x512") == .sizeNotSupported)
        #expect(LimitViolation.sizeNotSupported.rawValue == "size_not_supported")
        let embedding = try #require(try PriceSheet.parse(Fixtures.defaultSheetText()).models["text-embedding-3-small"])
        #expect(embedding.limits.violation(inputChars: 32001) == .textTooLong)
        #expect(embedding.limits.violation(promptChars: 10_000_000, n: 50, size: "x") == nil)
    }
}
