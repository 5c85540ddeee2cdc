import Foundation
import Testing

@testable import TallyCore

@Suite("Usage decoding")
struct UsageTests {
    static let designLine = """
        {"prompt_tokens":9,"completion_tokens":12,"cached_tokens":0,"cache_write_tokens":0,
         "audio_input_tokens":0,"audio_output_tokens":0,"images":0,"size":null,"quality":null,
         "video_seconds":0,"resolution":null,"calls":0,"predict_time":0}
        """

    @Test func fastParserReadsTheDesignObject() throws {
        #expect(try Usage.parseJSON(Self.designLine) == Usage(promptTokens: 9, completionTokens: 12))
        #expect(try Usage.parseJSON(Array(Self.designLine.utf8)) == Usage(promptTokens: 9, completionTokens: 12))
    }

    @Test func codableReadsTheDesignObject() throws {
        #expect(
            try JSONDecoder().decode(Usage.self, from: Data(Self.designLine.utf8))
                == Usage(promptTokens: 9, completionTokens: 12))
    }

    @Test func everyField() throws {
        let text = """
            {"prompt_tokens":1,"completion_tokens":2,"cached_tokens":3,"cache_write_tokens":4,"audio_input_tokens":5,
             "audio_output_tokens":6,"images":7,"size":"1024x1024","quality":"hd","video_seconds":8.5,"resolution":"1080p",
             "calls":9,"predict_time":0.25}
            """
        let expected = Usage(
            promptTokens: 1, completionTokens: 2, cachedTokens: 3, cacheWriteTokens: 4, audioInputTokens: 5,
            audioOutputTokens: 6, images: 7, size: "1024x1024", quality: "hd",
            videoSeconds: try ExactDecimal("8.5"), resolution: "1080p", calls: 9,
            predictTime: try ExactDecimal("0.25"))
        #expect(try Usage.parseJSON(text) == expected)
        #expect(try JSONDecoder().decode(Usage.self, from: Data(text.utf8)) == expected)
    }

    @Test func missingKeysAreZero() throws {
        #expect(try Usage.parseJSON("{}") == Usage())
        #expect(try Usage.parseJSON(" { \"images\" : 2 } \n") == Usage(images: 2))
        #expect(try JSONDecoder().decode(Usage.self, from: Data("{}".utf8)) == Usage())
    }

    @Test(
        "decimals are read exactly from the JSON text",
        arguments: [
            ("8", "8"), ("8.5", "8.5"), ("0.25", "0.25"), ("1e-3", "0.001"), ("\"8.5\"", "8.5"),
            ("0.123456789012", "0.123456789012"),
            ("12.0", "12"), ("null", "0"),
        ])
    func exactDecimals(json: String, value: String) throws {
        let usage = try Usage.parseJSON("{\"video_seconds\":\(json),\"predict_time\":\(json)}")
        #expect(usage.videoSeconds.description == value)
        #expect(usage.predictTime.description == value)
    }

    @Test func codableDecimalsUpToSixDigits() throws {
        let decoder = JSONDecoder()
        let usage = try decoder.decode(Usage.self, from: Data(#"{"video_seconds":8.5,"predict_time":0.000001}"#.utf8))
        #expect(usage.videoSeconds == (try ExactDecimal("8.5")))
        #expect(usage.predictTime == (try ExactDecimal("0.000001")))
        #expect(throws: DecodingError.self) {
            try decoder.decode(Usage.self, from: Data(#"{"video_seconds":0.1234567}"#.utf8))
        }
        let asString = try decoder.decode(Usage.self, from: Data(#"{"predict_time":"0.1234567"}"#.utf8))
        #expect(asString.predictTime.description == "0.1234567")
    }

    @Test(
        "the fast parser rejects bad usage with a message",
        arguments: [
            (#"{"prompt_tokens":-5}"#, "prompt_tokens: negative value -5"),
            (#"{"prompt_tokens":1.5}"#, "prompt_tokens: must be an integer"),
            (#"{"prompt_tokens":"5"}"#, "expected a number"),
            (#"{"images":99999999999999999999}"#, "images: too large"),
            (#"{"video_seconds":-1}"#, "video_seconds: negative value -1"),
            (#"{"video_seconds":1e-13}"#, #"video_seconds: invalid decimal "1e-13": more than 12 fractional digits"#),
            (#"{"size":5}"#, "size: expected a string or null"),
            (#"{"prompt_tokens":1"#, "unterminated object"),
            (#"{"prompt_tokens":1,}"#, "expected a key string"),
            (#"[1]"#, #"expected "{" to start the usage object"#),
            (#"{"a":1} x"#, "unexpected text after the usage object"),
            (#"{"prompt_tokens":01}"#, "leading zero in a number"),
            (#"{"x":tru}"#, "expected a value"),
        ])
    func fastParserErrors(json: String, message: String) {
        #expect(throws: UsageParseError.self) { try Usage.parseJSON(json) }
        do {
            _ = try Usage.parseJSON(json)
        } catch {
            #expect(error.message == message)
        }
    }

    @Test func codableRejectsNegatives() {
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(Usage.self, from: Data(#"{"calls":-1}"#.utf8)) }
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(Usage.self, from: Data(#"{"predict_time":-0.5}"#.utf8))
        }
    }

    @Test func unknownKeysAreSkipped() throws {
        let text =
            #"{"x":{"y":[1,2,{"z":"a\"b"}],"w":null},"prompt_tokens":3,"t":true,"f":false,"n":-1.5e3,"s":"\u00e9"}"#
        #expect(try Usage.parseJSON(text) == Usage(promptTokens: 3))
        #expect(try JSONDecoder().decode(Usage.self, from: Data(text.utf8)) == Usage(promptTokens: 3))
    }

    /// Found by a review: a key written with escapes was skipped here and read by JSONDecoder,
    /// so a line was charged nothing for what authorize held.
    @Test("keys written with escapes name their fields, as JSONDecoder reads them")
    func keysWithEscapes() throws {
        let text = #"{"prompt_tok\u0065ns":100000,"\u0063alls":2,"x\"y":1}"#
        #expect(try Usage.parseJSON(text) == Usage(promptTokens: 100_000, calls: 2))
        #expect(try JSONDecoder().decode(Usage.self, from: Data(text.utf8)) == Usage(promptTokens: 100_000, calls: 2))
    }

    @Test func stringsWithEscapesAndEmptyStrings() throws {
        let usage = try Usage.parseJSON(#"{"size":"1024\u0078768","quality":"","resolution":"4\"k\ud83d\ude00"}"#)
        #expect(usage.size == "1024x768")
        #expect(usage.quality == nil)
        #expect(usage.resolution == "4\"k😀")
    }

    @Test func lastDuplicateKeyWins() throws {
        #expect(try Usage.parseJSON(#"{"calls":1,"calls":2}"#) == Usage(calls: 2))
    }

    @Test func negativeZeroIsZero() throws {
        #expect(try Usage.parseJSON(#"{"calls":-0}"#) == Usage())
    }

    @Test func encodeThenDecode() throws {
        let usage = Usage(
            promptTokens: 1, completionTokens: 2, images: 3, size: "1024x1024",
            videoSeconds: try ExactDecimal("8.5"), calls: 4, predictTime: try ExactDecimal("0.123456789"))
        let data = try JSONEncoder().encode(usage)
        #expect(try JSONDecoder().decode(Usage.self, from: data) == usage)
        #expect(try Usage.parseJSON(Array(data)) == usage)
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.contains(#""video_seconds":8.5"#), "\(text)")
        #expect(text.contains(#""predict_time":"0.123456789""#), "\(text)")
    }

    @Test func helpers() {
        #expect(Usage().isZero)
        #expect(!Usage(videoSeconds: .one).isZero)
        #expect(Usage(completionTokens: -1).firstNegativeField == "completion_tokens")
        #expect(Usage(promptTokens: 5).firstNegativeField == nil)
        #expect(
            RequestKind.allCases.map(\.rawValue) == [
                "chat", "embedding", "rerank", "image", "video", "audio", "music", "call", "prediction",
            ])
    }
}

@Suite("Usage inside a log line")
struct UsageInLineTests {
    @Test func parsesTheUsageValueOfALine() throws {
        let line = #"{"request_id":"r1","usage": {"prompt_tokens":9,"video_seconds":1.5} ,"status":200}"#
        let bytes = Array(line.utf8)
        let start = try #require(line.range(of: #""usage":"#)).upperBound.utf16Offset(in: line)
        let (usage, end) = try bytes.withUnsafeBufferPointer { buffer in
            try Usage.parseJSONObject(buffer, at: start)
        }
        #expect(usage == Usage(promptTokens: 9, videoSeconds: try ExactDecimal("1.5")))
        #expect(String(decoding: bytes[end...], as: UTF8.self) == #" ,"status":200}"#)
    }

    @Test func reportsErrorsWithAbsoluteOffsets() {
        let bytes = Array(#"{"usage":{"calls":-2}}"#.utf8)
        do {
            _ = try bytes.withUnsafeBufferPointer { try Usage.parseJSONObject($0, at: 9) }
            Issue.record("accepted a negative count")
        } catch let error as UsageParseError {
            #expect(error.offset == 18)
            #expect(error.description == "usage: calls: negative value -2 (at byte 18)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}

/// Found by a review of ingest: usage that a model's prices cannot measure, or whose parts pass
/// their totals, was charged 0 (or its rest 0) unseen.
@Suite("Usage against what it is charged by")
struct UsageMeasureTests {
    static let sheet = Fixtures.designSheet

    @Test("a media-only model measures a request only with its unit; token and per-call models always")
    func measures() throws {
        func prices(_ model: String) throws -> PriceFields { try #require(Self.sheet.models[model]).prices }
        #expect(try !prices("dall-e-3").measures(Usage()))
        #expect(try prices("dall-e-3").measures(Usage(images: 1)))
        #expect(try !prices("veo-3").measures(Usage(promptTokens: 10)))
        #expect(try prices("veo-3").measures(Usage(videoSeconds: ExactDecimal("8"))))
        #expect(try prices("gpt-4o").measures(Usage()))
        #expect(try prices("suno-v4").measures(Usage()))
    }

    @Test("an image or video model priced by them needs them, even with a token price beside")
    func mediaModelWithTokenPrice() throws {
        let sheet = try Fixtures.sheet(
            models: """
                  gpt-image-1: {kind: image, input: "5.00", per_image: {default: "0.04"}}
                  video-with-prompt: {input: "1.00", per_video_second: {default: "0.40"}}
                  image-by-tokens: {kind: image, input: "5.00", output: "40.00"}
                """)
        func model(_ name: String) throws -> ModelPrice { try #require(sheet.models[name]) }
        #expect(try !model("gpt-image-1").measures(Usage(promptTokens: 120)))
        #expect(try model("gpt-image-1").measures(Usage(promptTokens: 120, images: 1)))
        #expect(try !model("video-with-prompt").measures(Usage(promptTokens: 50)))
        #expect(try model("video-with-prompt").measures(Usage(videoSeconds: ExactDecimal("4"))))
        #expect(try model("image-by-tokens").measures(Usage(promptTokens: 120)))
        // A line that says it was a chat request (an image model answering text) is measured as one.
        #expect(try model("gpt-image-1").measures(Usage(promptTokens: 120), as: .chat))
        #expect(try !model("gpt-image-1").measures(Usage(promptTokens: 120), as: .image))
    }

    @Test("cached, cache-write and audio parts may not pass their totals")
    func partsWithinTotals() {
        #expect(Usage(promptTokens: 100, cachedTokens: 60, cacheWriteTokens: 40).partsExceedingTotals == nil)
        #expect(
            Usage(promptTokens: 100, cachedTokens: 5000).partsExceedingTotals?.contains("prompt_tokens (100)") == true)
        #expect(Usage(promptTokens: 10, audioInputTokens: 11).partsExceedingTotals != nil)
        #expect(
            Usage(completionTokens: 5, audioOutputTokens: 6).partsExceedingTotals?.contains("completion_tokens") == true
        )
        #expect(Usage(promptTokens: .max, cachedTokens: .max, cacheWriteTokens: .max).partsExceedingTotals != nil)
    }
}
