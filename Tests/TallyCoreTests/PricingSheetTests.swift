import Foundation
import Testing

@testable import TallyCore

@Suite("Price sheet parsing")
struct PriceSheetParseTests {
    private let groups = """
        groups:
          default: {ratio: "1"}
          vip: {ratio: "0.8"}
        """

    @Test func designSheetParses() throws {
        let sheet = Fixtures.designSheet
        #expect(sheet.effectiveFromText == "2026-11-01T00:00:00Z")
        #expect(sheet.effectiveFrom == Date(timeIntervalSince1970: 1_793_491_200))
        #expect(sheet.groupNames == ["default", "svip", "vip"])
        #expect(sheet.groups["svip"]?.models == ["gpt-4o", "claude-sonnet-4"])
        #expect(sheet.groups["default"]?.description == "Standard")
        #expect(sheet.models.count == 7)
        let gpt = try #require(sheet.models["gpt-4o"])
        #expect(gpt.prices.tokens.input == (try ExactDecimal("2.5")))
        #expect(gpt.prices.tokens.audioOutput == (try ExactDecimal("80")))
        #expect(sheet.models["gemini-2.5-pro"]?.tiers.map(\.abovePromptTokens) == [200_000])
        #expect(sheet.models["claude-sonnet-4"]?.groupPrices["svip"]?.tokens.input == (try ExactDecimal("2")))
        #expect(sheet.models["dall-e-3"]?.prices.perImage?.count == 3)
        #expect(sheet.models["suno-v4"]?.prices.isPerCallOnly == true)
        #expect(sheet.models["replicate/flux-schnell"]?.prices.perComputeSecond == (try ExactDecimal("0.001")))
    }

    @Test func defaultSheetParses() throws {
        let sheet = try PriceSheet.parse(Fixtures.defaultSheetText())
        #expect(sheet.effectiveFromText == "2026-01-01T00:00:00Z")
        #expect(sheet.groups["vip"]?.ratio == (try ExactDecimal("0.8")))
        #expect(sheet.groups["svip"]?.ratio == (try ExactDecimal("0.6")))
        for name in [
            "gpt-4o", "gpt-4o-mini", "gpt-4.1", "o3", "o4-mini", "gpt-5", "gpt-4o-audio-preview", "whisper-1",
            "tts-1", "text-embedding-3-small", "text-embedding-3-large", "dall-e-3", "gpt-image-1",
            "claude-sonnet-4", "claude-opus-4", "claude-3-5-haiku", "gemini-2.5-pro", "gemini-2.5-flash",
            "deepseek-chat", "deepseek-reasoner", "qwen-max", "qwen-plus", "mj_imagine", "flux-pro", "flux-dev",
            "ideogram-v3", "doubao-seedream-3", "veo-3", "kling-v2-1", "luma-ray-2", "runway-gen4-turbo",
            "hailuo-02", "doubao-seedance-1-0-pro", "suno-v4", "replicate/flux-schnell",
        ] {
            let model = try #require(sheet.models[name], "\(name) missing from default.yaml")
            #expect(model.kind != nil, "\(name) has no kind")
            #expect(model.endpointTypes != nil, "\(name) has no endpoint_types")
        }
        for (name, model) in sheet.models {
            #expect(model.kind != nil && model.endpointTypes != nil, "\(name)")
        }
        #expect(sheet.models["gemini-2.5-pro"]?.tiers.count == 1)
        // A non-square image without a quality is priced at its size, not as a square one
        // (found by a review: dall-e-3 at 1024x1792 was charged $0.04, not $0.08).
        #expect(
            try rate(Usage(images: 1, size: "1024x1792"), model: "dall-e-3", group: "default", sheet: sheet).units
                == 40_000)
        #expect(
            try rate(
                Usage(images: 1, size: "1536x1024", quality: "auto"), model: "gpt-image-1", group: "default",
                sheet: sheet
            ).units == 31_500)
        // The DESIGN goldens hold with the default sheet too.
        #expect(
            try rate(Usage(promptTokens: 1000, completionTokens: 500), model: "gpt-4o", group: "vip", sheet: sheet)
                .units == 3000)
        #expect(
            try rate(
                Usage(videoSeconds: ExactDecimal(Int64(8)), resolution: "1080p"), model: "veo-3", group: "default",
                sheet: sheet
            ).units == 2_000_000)
    }

    @Test func jsonSheetParses() throws {
        let sheet = try PriceSheet.parse(
            """
            {"groups": {"default": {"ratio": 1}}, "models": {"m": {"input": 2.50, "tiers": [{"above_prompt_tokens": 10, "input": "3"}]}}}
            """)
        #expect(sheet.models["m"]?.prices.tokens.input == (try ExactDecimal("2.5")))
        #expect(sheet.effectiveFrom == nil)
    }

    @Test func unquotedNumbersAreReadExactly() throws {
        let sheet = try PriceSheet.parse(
            """
            groups: {default: {ratio: 0.1}}
            models: {m: {input: 0.3, output: 1.10}}
            """)
        #expect(sheet.groups["default"]?.ratio.description == "0.1")
        #expect(sheet.models["m"]?.prices.tokens.output?.description == "1.1")
        #expect(
            Fixtures.problems(
                """
                groups: {default: {ratio: 1}}
                models: {m: {input: 0.30000000000000004}}
                """) == [#"models.m.input: invalid decimal "0.30000000000000004": more than 12 fractional digits"#])
    }
}

@Suite("Price sheet errors")
struct PriceSheetErrorTests {
    @Test func unknownField() {
        #expect(
            Fixtures.problems(
                """
                groups: {default: {ratio: "1", discount: "2"}}
                models:
                  gpt-4o: {input: "2.50", inptu: "3"}
                extra: 1
                """) == [
                    "extra: unknown field", "groups.default.discount: unknown field",
                    "models.gpt-4o.inptu: unknown field",
                ])
    }

    @Test func unknownFieldInTierAndGroupPrices() {
        #expect(
            Fixtures.problems(
                """
                groups: {default: {ratio: "1"}, vip: {ratio: "0.8"}}
                models:
                  m:
                    input: "1"
                    tiers: [{above_prompt_tokens: 10, per_call: "1"}]
                    group_prices: {vip: {input: "1", sizes: [a]}}
                """) == [
                    "models.m.tiers[0].per_call: unknown field",
                    "models.m.tiers[0]: no price (give at least one of input, output, cached_input, cache_write, audio_input, audio_output)",
                    "models.m.group_prices.vip.sizes: unknown field",
                ])
    }

    @Test func negativePrice() {
        #expect(
            Fixtures.problems(
                """
                groups: {default: {ratio: "1"}}
                models:
                  gpt-4o: {input: "-1", output: "10"}
                  img: {per_image: {default: "-0.04"}}
                """) == [
                    #"models.gpt-4o.input: negative price "-1""#,
                    #"models.img.per_image.default: negative price "-0.04""#,
                ])
    }

    @Test func badDecimal() {
        #expect(
            Fixtures.problems(
                """
                groups: {default: {ratio: "1"}}
                models:
                  a: {input: "ten"}
                  b: {input: "1e-3"}
                  c: {input: "0.0000000000001"}
                  d: {input: [1]}
                  e: {per_call: "1,5"}
                """) == [
                    #"models.a.input: invalid decimal "ten": not a number"#,
                    #"models.b.input: invalid decimal "1e-3": exponent notation is not supported"#,
                    #"models.c.input: invalid decimal "0.0000000000001": more than 12 fractional digits"#,
                    #"models.d.input: expected a price such as "2.50", got a list"#,
                    #"models.e.per_call: invalid decimal "1,5": unexpected character ",""#,
                ])
    }

    @Test func tiersMustIncrease() {
        #expect(
            Fixtures.problems(
                """
                groups: {default: {ratio: "1"}}
                models:
                  gemini-2.5-pro:
                    input: "1.25"
                    tiers:
                      - {above_prompt_tokens: 200000, input: "2.50"}
                      - {above_prompt_tokens: 100000, input: "3"}
                      - {above_prompt_tokens: 200000, input: "4"}
                      - {input: "5"}
                      - {above_prompt_tokens: -1, input: "5"}
                      - {above_prompt_tokens: "lots", input: "5"}
                """) == [
                    "models.gemini-2.5-pro.tiers[1].above_prompt_tokens: 100000 must be greater than the previous tier's 200000 (tiers go in increasing order)",
                    "models.gemini-2.5-pro.tiers[2].above_prompt_tokens: 200000 must be greater than the previous tier's 200000 (tiers go in increasing order)",
                    "models.gemini-2.5-pro.tiers[3].above_prompt_tokens: missing (e.g. above_prompt_tokens: 200000)",
                    "models.gemini-2.5-pro.tiers[4].above_prompt_tokens: must not be negative, got -1",
                    #"models.gemini-2.5-pro.tiers[5].above_prompt_tokens: expected a whole number, got "lots""#,
                ])
    }

    @Test func groupRatioMustBePositive() {
        #expect(
            Fixtures.problems(
                """
                groups:
                  default: {ratio: "0"}
                  vip: {ratio: "-0.5"}
                  svip: {description: "no ratio"}
                  odd: {ratio: "abc"}
                models: {m: {input: "1"}}
                """) == [
                    #"groups.default.ratio: ratio must be greater than 0, got "0""#,
                    #"groups.vip.ratio: ratio must be greater than 0, got "-0.5""#,
                    #"groups.svip.ratio: missing (e.g. ratio: "1")"#,
                    #"groups.odd.ratio: invalid decimal "abc": not a number"#,
                ])
    }

    @Test func modelWithoutPrice() {
        #expect(
            Fixtures.problems(
                """
                groups: {default: {ratio: "1"}}
                models:
                  empty: {kind: chat}
                  onlyFailed: {charge_failed: "0.01"}
                  onlyTiers: {tiers: [{above_prompt_tokens: 1, input: "1"}]}
                  nothing: {}
                """) == [
                    "models.empty: no price (give at least one of input, output, cached_input, cache_write, audio_input, audio_output, per_image, per_video_second, per_call, per_compute_second)",
                    "models.onlyFailed: no price (give at least one of input, output, cached_input, cache_write, audio_input, audio_output, per_image, per_video_second, per_call, per_compute_second)",
                    "models.onlyTiers: no price (give at least one of input, output, cached_input, cache_write, audio_input, audio_output, per_image, per_video_second, per_call, per_compute_second)",
                    "models.nothing: no price (give at least one of input, output, cached_input, cache_write, audio_input, audio_output, per_image, per_video_second, per_call, per_compute_second)",
                ])
    }

    @Test func groupModelsMustExist() {
        #expect(
            Fixtures.problems(
                """
                groups:
                  default: {ratio: "1"}
                  svip: {ratio: "0.6", models: [gpt-4o, gpt-5x]}
                models:
                  gpt-4o: {input: "2.50"}
                """) == [#"groups.svip.models[1]: unknown model "gpt-5x""#])
    }

    @Test func groupPricesMustNameAGroup() {
        #expect(
            Fixtures.problems(
                """
                groups: {default: {ratio: "1"}}
                models:
                  claude-sonnet-4:
                    input: "3.00"
                    group_prices: {gold: {input: "2.00"}, default: {}}
                """) == [
                    "models.claude-sonnet-4.group_prices.default: no price (give at least one of input, output, cached_input, cache_write, audio_input, audio_output, per_image, per_video_second, per_call, per_compute_second)",
                    #"models.claude-sonnet-4.group_prices.gold: unknown group "gold""#,
                ])
    }

    @Test func limitsKindAndEndpointTypes() {
        #expect(
            Fixtures.problems(
                """
                groups: {default: {ratio: "1"}}
                models:
                  m:
                    input: "1"
                    max_n: 0
                    max_prompt_chars: 1.5
                    sizes: []
                    kind: chatbot
                    endpoint_types: openai
                    default_max_tokens: 4096
                    per_image: {}
                """) == [
                    #"models.m.per_image: empty (give at least one price, e.g. default: "0.04")"#,
                    "models.m.max_n: must be at least 1, got 0",
                    #"models.m.max_prompt_chars: expected a whole number, got "1.5""#,
                    "models.m.sizes: empty list (leave it out to allow every size)",
                    #"models.m.kind: unknown kind "chatbot" (one of chat, embedding, rerank, image, video, audio, music, call, prediction)"#,
                    "models.m.endpoint_types: expected a list of strings, got a scalar",
                ])
    }

    @Test func topLevelProblems() {
        #expect(
            Fixtures.problems("models: {m: {input: \"1\"}}") == [
                #"groups: missing (give at least one group, e.g. default: {ratio: "1"})"#
            ])
        #expect(
            Fixtures.problems("groups: {}\nmodels: {}") == [
                "groups: at least one group is required", "models: at least one model is required",
            ])
        #expect(
            Fixtures.problems("effective_from: 2026-13-01T00:00:00Z\ngroups: {d: {ratio: 1}}\nmodels: {m: {input: 1}}")
                == [
                    #"effective_from: invalid RFC 3339 time "2026-13-01T00:00:00Z" (expected e.g. 2026-11-01T00:00:00Z)"#
                ])
        #expect(Fixtures.problems("") == ["the price sheet is empty"])
        #expect(Fixtures.problems("- a\n- b") == ["expected a mapping, got a list"])
        #expect(
            Fixtures.problems("groups: [default]\nmodels: {m: {input: 1}}") == [
                "groups: expected a mapping, got a list"
            ])
    }

    @Test func manyProblemsAreAllReported() throws {
        let text = """
            groups:
              default: {ratio: "0"}
              svip: {ratio: "0.6", models: [nope]}
            models:
              gpt-4o: {input: "-1", output: "x"}
              claude: {input: "3", group_prices: {gold: {input: "2"}}}
            """
        do {
            _ = try PriceSheet.parse(text)
            Issue.record("accepted a bad sheet")
        } catch {
            #expect(error.problems.count == 5)
            #expect(
                error.description == """
                    invalid price sheet (5 problems):
                      groups.default.ratio: ratio must be greater than 0, got "0"
                      models.gpt-4o.input: negative price "-1"
                      models.gpt-4o.output: invalid decimal "x": not a number
                      groups.svip.models[0]: unknown model "nope"
                      models.claude.group_prices.gold: unknown group "gold"
                    """)
        }
    }

    @Test func singleProblemDescription() {
        do {
            _ = try PriceSheet.parse("groups: {d: {ratio: 1}}\nmodels: {m: {input: \"-1\"}}")
            Issue.record("accepted a bad sheet")
        } catch {
            #expect(error.description == #"invalid price sheet: models.m.input: negative price "-1""#)
        }
    }

    @Test func syntaxErrors() {
        let json = Fixtures.problems(#"{"groups": {"default": {"ratio": "1"}}, "models": {"m": {"input": "1"}"#)
        #expect(json.count == 1)
        #expect(json.first?.hasPrefix("invalid JSON: ") == true, "\(json)")
        let yaml = Fixtures.problems("groups:\n  default: {ratio: \"1\"\nmodels: [")
        #expect(yaml.count == 1)
        #expect(yaml.first?.hasPrefix("invalid YAML: ") == true, "\(yaml)")
        #expect(yaml.first?.contains("line ") == true, "\(yaml)")
        let duplicate = Fixtures.problems("groups: {d: {ratio: 1}}\nmodels:\n  m: {input: 1}\n  m: {input: 2}")
        #expect(duplicate.count == 1)
        #expect(duplicate.first?.contains(#""m""#) == true, "\(duplicate)")
    }

    /// Anchors whose aliases repeat the one before ten times, `depth` levels deep, each level a
    /// list of ten aliases of the one before; the first holds ten copies of `text`.
    static func laughs(depth: Int, text: String = "x") -> String {
        var lines = ["a0: &a0 [" + Array(repeating: text, count: 10).joined(separator: ", ") + "]"]
        for level in 1..<depth {
            lines.append(
                "a\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 10).joined(separator: ", ") + "]")
        }
        return lines.joined(separator: "\n")
    }

    /// Found by a security review: a sheet of a few hundred bytes whose aliases expand to 10¹³
    /// values pinned the thread of `PUT /api/admin/prices` for hours inside Yams; its review
    /// found that a few long texts repeated so did the same within a count of values.
    @Test func aliasesThatExpandTooFarAreRefused() {
        #expect(YAMLExpansion.problem(in: Self.laughs(depth: 6)) == nil, "about 2 MiB expanded is allowed")
        guard case .tooLarge(line: 7, _) = YAMLExpansion.problem(in: Self.laughs(depth: 7)) else {
            Issue.record("21 MiB expanded passed, or was stopped elsewhere than on the last line")
            return
        }
        // Few values, long ones: 100 copies of a 200 KB text.
        let long = Self.laughs(depth: 2, text: String(repeating: "y", count: 200_000))
        guard case .tooLarge = YAMLExpansion.problem(in: long) else {
            Issue.record("100 copies of a 200 KB text passed")
            return
        }
        let problems = Fixtures.problems(Self.laughs(depth: 7))
        #expect(problems.count == 1)
        #expect(problems.first?.contains("aliases expand it past 16 MiB at line 7") == true, "\(problems)")
    }

    /// Found by a review: each unknown reference searched every problem found before it, so a
    /// sheet of tens of thousands of them held `PUT /api/admin/prices` for hours; and every
    /// problem went into the answer.
    @Test func manyUnknownReferencesAreCappedAndQuick() {
        let references = Array(repeating: "nope", count: 20_000).joined(separator: ", ")
        do {
            _ = try PriceSheet.parse(
                "groups: {default: {ratio: \"1\", models: [\(references)]}}\nmodels: {m: {input: \"1\"}}")
            Issue.record("accepted")
        } catch {
            #expect(error.problems.count == SheetReader.maximumProblems)
            #expect(error.problems.first?.description == #"groups.default.models[0]: unknown model "nope""#)
            #expect(error.unlisted == 19_900)
            #expect(error.description.hasPrefix("invalid price sheet (20000 problems):"))
            #expect(error.description.hasSuffix("\n  and 19900 more"))
        }
    }

    /// Yams hashes every key whole: a key that is an alias of a long list costs as much as the
    /// list's expansion, however often it is repeated. A price sheet's keys are always text.
    @Test func keysMustBeText() {
        for text in ["a: &a [x]\n? *a\n: 1", "? [x, y]\n: 1", "? {x: 1}\n: 1", "m:\n  ? *m\n  : 1"] {
            guard case .keyNotText = YAMLExpansion.problem(in: text) else {
                Issue.record("\(text) passed")
                continue
            }
        }
        #expect(YAMLExpansion.problem(in: "a: &a x\nb: *a\nc: [*a, *a]\nd: {e: *a}") == nil)
        // An alias of a text is a text key (Yams resolves it so); of a text re-anchored as a list, not.
        #expect(YAMLExpansion.problem(in: "a: &k gpt-4o\nm:\n  ? *k\n  : 1") == nil)
        #expect(YAMLExpansion.problem(in: "a: &k x\nb: &k [x]\n? *k\n: 1") != nil)
        let problems = Fixtures.problems("groups: {default: {ratio: \"1\"}}\nmodels:\n  ? [x]\n  : {input: \"1\"}")
        #expect(problems.first?.hasPrefix("a key must be text") == true, "\(problems)")
    }

    @Test func anchorsShareAModelsPrices() throws {
        let sheet = try PriceSheet.parse(
            """
            groups: {default: {ratio: "1"}}
            models:
              gpt-4o: &four {input: "2.5", output: "10"}
              gpt-4o-2024-08-06: *four
            """)
        #expect(sheet.models["gpt-4o-2024-08-06"]?.prices.tokens.output == (try ExactDecimal("10")))
    }

    @Test func rfc3339Variants() throws {
        func parse(_ text: String) -> String? { RFC3339Time(text)?.text }
        #expect(parse("2026-11-01T00:00:00Z") == "2026-11-01T00:00:00Z")
        #expect(parse("2026-11-01T08:00:00+08:00") == "2026-11-01T00:00:00Z")
        #expect(parse("2026-10-31T19:30:00.5-04:30") == "2026-11-01T00:00:00.5Z")
        #expect(parse("2024-02-29 12:00:00z") == "2024-02-29T12:00:00Z")
        #expect(parse("1969-12-31T23:59:59.999999999Z") == "1969-12-31T23:59:59.999999999Z")
        #expect(parse("2025-02-29T00:00:00Z") == nil)
        #expect(parse("2026-11-01T24:00:00Z") == nil)
        #expect(parse("2026-11-01T00:00:00") == nil)
        #expect(parse("2026-11-01") == nil)
        #expect(parse("2026-11-01T00:00:00.1234567890Z") == nil)
        #expect(RFC3339Time("1970-01-01T00:00:01.25Z")?.date == Date(timeIntervalSince1970: 1.25))
    }
}

@Suite("Canonical JSON")
struct CanonicalJSONTests {
    @Test func designSheetRoundTrips() throws {
        let sheet = Fixtures.designSheet
        let json = sheet.canonicalJSON()
        let again = try PriceSheet.parse(json)
        #expect(again == sheet)
        #expect(again.canonicalJSON() == json)
    }

    @Test func defaultSheetRoundTrips() throws {
        let sheet = try PriceSheet.parse(Fixtures.defaultSheetText())
        let json = sheet.canonicalJSON()
        #expect(try PriceSheet.parse(json) == sheet)
        #expect(try JSONSerialization.jsonObject(with: Data(json.utf8)) is [String: Any])
    }

    @Test func exactText() throws {
        let sheet = try PriceSheet.parse(
            """
            effective_from: 2026-11-01T09:00:00.250+01:00
            models:
              z/m: {output: "10.00", input: "2.50", tiers: [{above_prompt_tokens: 5, input: "3"}], sizes: ["a\\"b"],
                    group_prices: {vip: {per_image: {default: "0.010"}}}, kind: image, endpoint_types: [], max_n: 2}
              a: {per_call: "0.1", charge_failed: "0.01"}
            groups:
              vip: {ratio: "0.80", models: [z/m, a], description: "Très bien"}
              default: {ratio: 1}
            """)
        #expect(
            sheet.canonicalJSON() == """
                {"effective_from":"2026-11-01T08:00:00.25Z","groups":{"default":{"ratio":"1"},"vip":{"description":"Très bien","models":["z/m","a"],"ratio":"0.8"}},"models":{"a":{"charge_failed":"0.01","per_call":"0.1"},"z/m":{"endpoint_types":[],"group_prices":{"vip":{"per_image":{"default":"0.01"}}},"input":"2.5","kind":"image","max_n":2,"output":"10","sizes":["a\\"b"],"tiers":[{"above_prompt_tokens":5,"input":"3"}]}}}
                """)
        #expect(try PriceSheet.parse(sheet.canonicalJSON()) == sheet)
    }

    @Test func differentSheetsDiffer() throws {
        let a = try Fixtures.sheet(models: "  m: {input: \"1\"}")
        let b = try Fixtures.sheet(models: "  m: {input: \"1.000001\"}")
        #expect(a != b)
        #expect(a.canonicalJSON() != b.canonicalJSON())
    }
}
