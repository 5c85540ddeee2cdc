import Foundation
import TallyCore
import Testing

@Suite("Enforcement core: hold estimates and rate windows")
struct EnforcementCoreTests {
    static let sheet = try! PriceSheet.parse(
        """
        groups: {default: {ratio: "1"}}
        models:
          gpt-4o: {input: "2.50", output: "10.00", default_max_tokens: 100, max_prompt_chars: 1000}
          plain-chat: {input: "1.00", output: "1.00"}
          dall-e-3: {per_image: {default: "0.04"}, sizes: ["1024x1024"], max_n: 4}
          veo-3: {per_video_second: {"720p": "0.40"}}
          suno-v4: {per_call: "0.10"}
          embed: {input: "0.02", kind: embedding, max_input_chars: 50}
          tts-1: {input: "15.00", kind: audio, max_input_chars: 4096}
          audio-chat: {input: "2.50", output: "10.00", kind: audio}
          veo-8s: {per_video_second: {default: "0.40"}, default_seconds: 8}
          whisper: {per_compute_second: "0.0001", kind: audio, default_seconds: 120}
          flux: {per_compute_second: "0.001", per_image: {default: "0.003"}}
        """)

    static func usage(_ model: String, _ estimate: AuthorizeEstimate) -> Result<Usage, APIError> {
        HoldEstimator.usage(for: estimate, model: sheet.models[model]!)
    }

    @Test("chat: given tokens, else characters / 4 rounded up; max_tokens, else the model's default, else 4096")
    func chat() throws {
        let given = try Self.usage("gpt-4o", AuthorizeEstimate(usage: Usage(promptTokens: 7), maxTokens: 20)).get()
        #expect(given.promptTokens == 7 && given.completionTokens == 20)
        let fromChars = try Self.usage("gpt-4o", AuthorizeEstimate(promptChars: 9)).get()
        #expect(fromChars.promptTokens == 3 && fromChars.completionTokens == 100)
        let fallback = try Self.usage("plain-chat", AuthorizeEstimate(promptChars: 8)).get()
        #expect(fallback.promptTokens == 2 && fallback.completionTokens == HoldEstimator.fallbackMaxTokens)
        #expect(Self.usage("gpt-4o", AuthorizeEstimate(promptChars: 1001)) == .failure(APIError(.promptTooLong)))
    }

    @Test("images, video, per-call and embeddings; the limits answer their catalog entries")
    func otherKinds() throws {
        #expect(try Self.usage("dall-e-3", AuthorizeEstimate(promptChars: 5, n: 3)).get().images == 3)
        #expect(Self.usage("dall-e-3", AuthorizeEstimate(n: 1)) == .failure(APIError(.promptMissing)))
        #expect(Self.usage("dall-e-3", AuthorizeEstimate(promptChars: 5, n: 5)) == .failure(APIError(.nNotWithinRange)))
        #expect(Self.usage("dall-e-3", AuthorizeEstimate(promptChars: 5, n: 0)) == .failure(APIError(.nNotWithinRange)))
        #expect(
            Self.usage("dall-e-3", AuthorizeEstimate(usage: Usage(size: "512x512"), promptChars: 5))
                == .failure(APIError(.sizeNotSupported)))
        #expect(try Self.usage("veo-3", AuthorizeEstimate(promptChars: 5)).get().videoSeconds == ExactDecimal(5))
        // Without a max_n: fewer than one is still invalid (it would hold nothing), and any Int64
        // is held for without overflowing.
        for n: Int64 in [0, -1, .min] {
            #expect(
                Self.usage("veo-3", AuthorizeEstimate(promptChars: 5, n: n)) == .failure(APIError(.nNotWithinRange)))
            #expect(
                Self.usage("suno-v4", AuthorizeEstimate(promptChars: 5, n: n)) == .failure(APIError(.nNotWithinRange)))
        }
        #expect(
            try Self.usage("veo-3", AuthorizeEstimate(promptChars: 5, n: 2_000_000_000_000_000_000)).get().videoSeconds
                == ExactDecimal(Int64.max))
        #expect(try Self.usage("suno-v4", AuthorizeEstimate(promptChars: 5)).get().calls == 1)
        #expect(try Self.usage("embed", AuthorizeEstimate(inputChars: 40)).get().promptTokens == 10)
        #expect(Self.usage("embed", AuthorizeEstimate(inputChars: 51)) == .failure(APIError(.textTooLong)))
    }

    /// Left open by earlier notes: a model priced per compute second was held at nothing unless
    /// the estimate gave its length, and every video at 5 s (Veo's clips are 8).
    @Test("seconds an estimate does not give: the model's default_seconds per video, or as its predict_time")
    func defaultSeconds() throws {
        #expect(
            try Self.usage("veo-8s", AuthorizeEstimate(promptChars: 5, n: 2)).get().videoSeconds == ExactDecimal(16))
        #expect(
            try Self.usage("veo-8s", AuthorizeEstimate(usage: Usage(videoSeconds: ExactDecimal(4)), promptChars: 5))
                .get().videoSeconds == ExactDecimal(4))
        #expect(try Self.usage("whisper", AuthorizeEstimate()).get().predictTime == ExactDecimal(120))
        #expect(
            try Self.usage("whisper", AuthorizeEstimate(usage: Usage(predictTime: ExactDecimal(30)))).get().predictTime
                == ExactDecimal(30))
        #expect(try Self.usage("flux", AuthorizeEstimate(promptChars: 5)).get().predictTime == .zero, "none given")
    }

    /// Found by a review: speech is billed per input character (the gateway reports them as
    /// prompt tokens), and the hold counted a quarter of them.
    @Test("speech holds every character of its input, as its line is charged")
    func speechPerCharacter() throws {
        let held = try Self.usage("tts-1", AuthorizeEstimate(inputChars: 4_000)).get()
        #expect(held.promptTokens == 4_000)
        let hold = try rate(held, model: "tts-1", group: "default", sheet: Self.sheet).units
        let charge = try rate(Usage(promptTokens: 4_000), model: "tts-1", group: "default", sheet: Self.sheet).units
        #expect(hold >= charge && charge == 30_000)
        // An audio model that also answers in tokens counts its characters as text does.
        #expect(try Self.usage("audio-chat", AuthorizeEstimate(inputChars: 4_000)).get().promptTokens == 1_000)
    }

    @Test("the estimate decodes from JSON; prompt text counts its characters; negatives are refused")
    func decoding() throws {
        let estimate = try JSONDecoder().decode(
            AuthorizeEstimate.self, from: Data(#"{"prompt":"héllo","max_tokens":9,"images":2,"size":"1024x1024"}"#.utf8)
        )
        #expect(
            estimate.promptChars == 5 && estimate.maxTokens == 9 && estimate.usage.images == 2
                && estimate.usage.size == "1024x1024")
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(AuthorizeEstimate.self, from: Data(#"{"max_tokens":-1}"#.utf8))
        }
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode(AuthorizeEstimate.self, from: Data(#"{"prompt_tokens":-1}"#.utf8))
        }
    }

    @Test("the sliding window lets `limit` through per minute and weighs the previous minute")
    func slidingWindow() {
        var counter = SlidingWindowCounter()
        func acquire(_ limit: Int, at now: Double) -> Bool { counter.tryAcquire(limit: limit, now: now) }
        let start = 6_000.0  // a minute boundary
        for _ in 0..<3 { #expect(acquire(3, at: start + 1)) }
        #expect(!acquire(3, at: start + 59))
        // 30 s into the next minute half of the previous minute's 3 still count:
        // 1.5 + 0 and 1.5 + 1 are below 3, 1.5 + 2 is not.
        #expect(acquire(3, at: start + 90))
        #expect(acquire(3, at: start + 90))
        #expect(!acquire(3, at: start + 90))
        counter = SlidingWindowCounter()
        #expect(acquire(1, at: start))
        #expect(!acquire(1, at: start + 30))
        #expect(acquire(1, at: start + 120))
        #expect(counter.isIdle(now: start + 300))
    }

    @Test("a request whose clock reading is late counts in the newest minute and forgets nothing")
    func slidingWindowLateReading() {
        var counter = SlidingWindowCounter()
        let start = 6_000.0  // a minute boundary
        func acquire(at now: Double) -> Bool { counter.tryAcquire(limit: 2, now: now) }
        #expect(acquire(at: start + 59))
        #expect(acquire(at: start + 59))
        #expect(acquire(at: start + 61))  // 2 × 59/60 + 0 < 2
        // Read its clock in the first minute and reached the counter in the second: it counts
        // there (2 + 1), refused, and the second minute's count stays.
        #expect(!acquire(at: start + 59.9))
        #expect(!acquire(at: start + 62))  // 2 × 58/60 + 1
    }
}
