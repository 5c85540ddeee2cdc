import Foundation
import TallyCore
import TallyTestSupport
import Testing

/// `LogLine.parse` over mutated gateway lines (IngestLineFuzzer). `TALLY_FUZZ_SEED` replays a
/// run (every failure names the seed and the case); `TALLY_FUZZ_CASES` runs more.
@Suite("gateway line parser, fuzzed")
struct LogLineFuzzTests {
    static let seed = ProcessInfo.processInfo.environment["TALLY_FUZZ_SEED"].flatMap(UInt64.init) ?? 20_261_123
    static let cases = ProcessInfo.processInfo.environment["TALLY_FUZZ_CASES"].flatMap(Int.init) ?? 30_000

    /// Mutations the parser itself must refuse whenever the whole pipeline must (the others,
    /// such as an unknown model, are refused later, by validation).
    static let syntaxErrors = ["truncate", "trailing", "raw_control", "not an object", "wrong_type", "deep nesting"]

    @Test(
        "30,000 mutated lines: never a crash, only parse codes, syntax errors refused, nothing accepted that is not JSON"
    )
    func fuzz() async throws {
        var fuzzer = IngestLineFuzzer(seed: Self.seed, users: 40, prefix: "core")
        var accepted = 0
        var refused = 0
        for index in 0..<Self.cases {
            // CPU-bound: let the in-process servers of other suites run too.
            if index % 500 == 0 { await Task.yield() }
            let fuzzCase = fuzzer.next()
            let label = "seed \(Self.seed) case \(index) (\(fuzzCase.mutation)): \(fuzzCase.text)"
            let result = fuzzCase.bytes.withUnsafeBufferPointer { bytes in
                Result { () throws(IngestRejection) in try LogLine.parse(bytes) }
            }
            switch result {
            case .failure(let rejection):
                refused += 1
                #expect(["invalid_json", "invalid_usage"].contains(rejection.code), "\(label): \(rejection)")
                #expect(!rejection.message.isEmpty, "\(label)")
                #expect(fuzzCase.expectation != .accept, "\(label): refused with \(rejection)")
            case .success(let line):
                accepted += 1
                let syntaxError =
                    fuzzCase.expectation == .reject && Self.syntaxErrors.contains { fuzzCase.mutation.hasPrefix($0) }
                #expect(!syntaxError, "\(label): accepted as \(line)")
                if let text = String(validating: fuzzCase.bytes, as: UTF8.self) {
                    // Whatever the parser accepts (as valid UTF-8) is a JSON object.
                    let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
                    #expect(object != nil, "\(label): accepted, but it is not a JSON object")
                }
                if let usage = line.usage {
                    let counts = [
                        usage.promptTokens, usage.completionTokens, usage.cachedTokens, usage.cacheWriteTokens,
                        usage.audioInputTokens, usage.audioOutputTokens, usage.images, usage.calls,
                    ]
                    #expect(counts.allSatisfy { $0 >= 0 }, "\(label): negative count accepted")
                    #expect(
                        !usage.videoSeconds.isNegative && !usage.predictTime.isNegative,
                        "\(label): negative seconds accepted")
                }
                if fuzzCase.mutation == "none" {
                    #expect(
                        line.requestID?.hasPrefix("core-") == true && line.key != nil && line.model != nil
                            && line.usage != nil, "\(label)")
                }
            }
        }
        print("LogLine.parse fuzz (seed \(Self.seed)): \(Self.cases) cases, \(accepted) parsed, \(refused) refused")
        #expect(accepted > Self.cases / 4 && refused > Self.cases / 4)
    }

    @Test("nesting inside an unknown member: 64 levels are read, 65 are refused, 100,000 do not exhaust the stack")
    func nestingLimit() {
        for (depth, ok) in [(64, true), (65, false), (100_000, false)] {
            for (open, innermost, close) in [("[", "", "]"), (#"{"a":"#, "0", "}")] {
                let line =
                    #"{"request_id":"n","x":"# + String(repeating: open, count: depth) + innermost
                    + String(repeating: close, count: depth) + "}"
                var text = line
                let parsed = text.withUTF8 { bytes in (try? LogLine.parse(bytes)) != nil }
                #expect(parsed == ok, "depth \(depth) \(open)")
            }
        }
    }

    @Test("text after the object is refused, whitespace is not")
    func trailingText() {
        let valid = LogLines.chat("trail-1")
        for (suffix, ok) in [("", true), ("  \t", true), ("x", false), ("}", false), (" {}", false), (",", false)] {
            var text = valid + suffix
            let parsed = text.withUTF8 { bytes in (try? LogLine.parse(bytes)) != nil }
            #expect(parsed == ok, "suffix \(suffix.debugDescription)")
        }
    }

    @Test("escapes are checked in every string, read or skipped")
    func escapes() {
        for (string, ok) in [
            (#"a\nb"#, true), (#"\u00e9\/"#, true), (#"\q"#, false), (#"\u12"#, false), (#"\u12g4"#, false),
            (#"x\"#, false),
        ] {
            for line in [
                #"{"request_id":"\#(string)"}"#, #"{"request_id":"e","x":"\#(string)"}"#,
                #"{"request_id":"e","usage":{"\#(string)":1}}"#,
            ] {
                var text = line
                let parsed = text.withUTF8 { bytes in (try? LogLine.parse(bytes)) != nil }
                #expect(parsed == ok, "\(line)")
            }
        }
    }

    /// Found by a review: repaired to U+FFFD, ids differing only in invalid bytes or in a lone
    /// surrogate read as one, and the second line was a duplicate, charged nothing.
    @Test("a read string that is not UTF-8, or escapes half a surrogate pair, is refused as invalid_json")
    func invalidText() throws {
        func parse(_ id: [UInt8]) -> Result<LogLine, IngestRejection> {
            let line = Array(#"{"request_id":""#.utf8) + id + Array(#"","model":"gpt-4o","usage":{}}"#.utf8)
            return line.withUnsafeBufferPointer { bytes in
                Result { () throws(IngestRejection) in try LogLine.parse(bytes) }
            }
        }
        for id in [
            Array("r-".utf8) + [0xFF], Array("r-".utf8) + [0xC3, 0x28], Array(#"r-\ud800"#.utf8),
            Array(#"r-\udc00x"#.utf8), Array(#"r-\ud800\u0041"#.utf8), Array(#"\n"#.utf8) + [0xFE],
        ] {
            guard case .failure(let rejection) = parse(id) else {
                Issue.record("accepted \(String(decoding: id, as: UTF8.self).debugDescription)")
                continue
            }
            #expect(rejection.code == "invalid_json")
        }
        #expect(try parse(Array(#"r-\ud83d\ude00 é"#.utf8)).get().requestID == "r-😀 é")
    }
}
