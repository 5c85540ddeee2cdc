import Foundation
import TallyCore
import TallyTestSupport
import Testing

/// The authorize body's fast reader (`AuthorizeRequest.parseCommon`) may decline a body (then
/// JSONDecoder reads it) but never read one differently from JSONDecoder.
@Suite("authorize body: the common-shape reader agrees with JSONDecoder")
struct AuthorizeBodyTests {
    static func decoded(_ bytes: [UInt8]) -> AuthorizeRequest? {
        try? JSONDecoder().decode(AuthorizeRequest.self, from: Data(bytes))
    }

    static func common(_ bytes: [UInt8]) -> AuthorizeRequest? {
        bytes.withUnsafeBufferPointer { AuthorizeRequest.parseCommon($0) }
    }

    @Test("the usual bodies are read without JSONDecoder, to the same values")
    func usualBodies() {
        let bodies = [
            #"{"request_id":"r-1","key":"sk-abc","model":"gpt-4o","estimate":{"prompt_tokens":1000,"max_tokens":500}}"#,
            #" { "request_id" : "r-2", "key": "sk-abc", "model": "dall-e-3", "ip": "203.0.113.7", "channel_id": 3,"#
                + #" "estimate": {"prompt": "a lighthouse at dusk", "n": 2, "size": "1024x1024", "quality": ""} } "#,
            #"{"request_id":"r-3","key":"sk-abc","model":"suno-v4","estimate":{"prompt_chars":40,"calls":1}}"#,
            #"{"request_id":"r-4","key":"sk-abc","model":"gpt-4o","estimate":{}}"#,
            #"{}"#,
        ]
        for body in bodies {
            let bytes = Array(body.utf8)
            let common = Self.common(bytes)
            #expect(common != nil, "\(body)")
            #expect(common == Self.decoded(bytes), "\(body)")
        }
        let prompt = Self.common(Array(bodies[1].utf8))?.estimate
        #expect(prompt?.promptChars == 20 && prompt?.usage.size == "1024x1024" && prompt?.usage.quality == nil)
    }

    @Test("what it cannot decide exactly as JSONDecoder does, it leaves to JSONDecoder")
    func declined() {
        let bodies = [
            #"{"request_id":"r\u0031","key":"k","model":"m"}"#,  // an escape
            #"{"request_id":"é","key":"k","model":"m"}"#,  // not ASCII
            #"{"request_id":"a","request_id":"b"}"#,  // a repeated key
            #"{"request_id":null}"#, #"{"channel_id":-1}"#, #"{"channel_id":1.0}"#, #"{"channel_id":1e2}"#,
            #"{"channel_id":12345678901234567890}"#, #"{"extra":1}"#, #"{"estimate":{"video_seconds":8}}"#,
            #"{"estimate":{"prompt_tokens":-5}}"#, #"[]"#, #"{"key":"k"} x"#, #"{"key":"k""#, "\u{FEFF}{}",
        ]
        for body in bodies { #expect(Self.common(Array(body.utf8)) == nil, "\(body)") }
    }

    @Test("20,000 mutated bodies: whatever it reads, JSONDecoder reads the same")
    func agreesOnFuzzedBodies() {
        var random = SplitMix64(seed: AuthorizeFuzzTests.seed)
        var fuzzers = Dictionary(
            uniqueKeysWithValues: AuthorizeFuzzTests.Family.allCases.enumerated().map {
                ($1, JSONFuzzer(seed: AuthorizeFuzzTests.seed &+ UInt64($0 + 1), schema: $1.schema))
            })
        var read = 0
        for index in 0..<20_000 {
            let (family, valid) = AuthorizeFuzzTests.validBody(index, random: &random)
            let input = index % 4 == 0 ? fuzzers[family]!.mutate(valid, with: .none) : fuzzers[family]!.mutate(valid)
            guard let common = Self.common(input.bytes) else { continue }
            read += 1
            #expect(common == Self.decoded(input.bytes), "case \(index) (\(input.mutation)): \(input.text)")
        }
        #expect(read > 5_000, "the usual bodies take the fast path")
    }
}
