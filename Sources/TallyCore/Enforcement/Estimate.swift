import Foundation

/// What the gateway expects a request to use, sent with `authorize` (DESIGN §5).
///
/// JSON: every key of ``Usage`` (`prompt_tokens`, `completion_tokens`, `images`, `size`,
/// `quality`, `video_seconds`, `resolution`, `calls`, `predict_time`, …) plus the request's shape:
/// `prompt` (its text, only its length is used) or `prompt_chars`, `input_chars` (the text of an
/// embedding, rerank or speech request), `max_tokens` and `n`. Every key is optional.
public struct AuthorizeEstimate: Sendable, Equatable, Decodable {
    /// The usage fields as given.
    public var usage: Usage
    /// The prompt's length in characters (`prompt_chars`, or the length of `prompt`).
    public var promptChars: Int64?
    /// The input text's length in characters (`input_chars`).
    public var inputChars: Int64?
    /// `max_tokens` of the request.
    public var maxTokens: Int64?
    /// Images (or videos) asked for (`n`).
    public var n: Int64?

    /// Creates an estimate.
    public init(
        usage: Usage = Usage(), promptChars: Int64? = nil, inputChars: Int64? = nil,
        maxTokens: Int64? = nil, n: Int64? = nil
    ) {
        self.usage = usage
        self.promptChars = promptChars
        self.inputChars = inputChars
        self.maxTokens = maxTokens
        self.n = n
    }

    enum CodingKeys: String, CodingKey {
        case prompt
        case promptChars = "prompt_chars"
        case inputChars = "input_chars"
        case maxTokens = "max_tokens"
        case n
    }

    public init(from decoder: any Decoder) throws {
        usage = try Usage(from: decoder)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if let prompt = try container.decodeIfPresent(String.self, forKey: .prompt) {
            promptChars = Int64(prompt.count)
        } else {
            promptChars = try container.decodeIfPresent(Int64.self, forKey: .promptChars)
        }
        inputChars = try container.decodeIfPresent(Int64.self, forKey: .inputChars)
        maxTokens = try container.decodeIfPresent(Int64.self, forKey: .maxTokens)
        n = try container.decodeIfPresent(Int64.self, forKey: .n)
        for (key, value) in [("prompt_chars", promptChars), ("input_chars", inputChars), ("max_tokens", maxTokens)]
        where (value ?? 0) < 0 {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "\(key) must not be negative"))
        }
    }
}

/// Turns an authorize estimate into the usage to hold for, after the model's limits.
public enum HoldEstimator {
    /// `max_tokens` assumed for a chat request that names none, when the sheet gives the model
    /// no `default_max_tokens`.
    public static let fallbackMaxTokens: Int64 = 4096
    /// Seconds assumed for a video request that gives no `video_seconds`, when the sheet gives
    /// the model no `default_seconds`.
    public static let fallbackVideoSeconds: Int64 = 5

    /// The usage to price for the hold, or the catalog error of the limit the estimate breaks:
    /// `prompt_missing` (a generation model without a prompt), `prompt_too_long`,
    /// `text_too_long`, `n_not_within_range`, `size_not_supported`.
    ///
    /// Prompt tokens are the given `prompt_tokens`, else ⌈characters / 4⌉ (the `input_chars` of
    /// an audio model priced on its input alone count whole: speech is billed per character);
    /// completion tokens
    /// the given `completion_tokens`, else `max_tokens`, else the model's `default_max_tokens`,
    /// else ``fallbackMaxTokens`` (chat models only). A video's seconds are the given
    /// `video_seconds`, else the model's `default_seconds`, else ``fallbackVideoSeconds``, per
    /// video asked for; the compute seconds of a model priced by them the given `predict_time`,
    /// else its `default_seconds`, else none (held at nothing but its other prices).
    public static func usage(for estimate: AuthorizeEstimate, model price: ModelPrice) -> Result<Usage, APIError> {
        let kind = price.servedKind
        let generates = kind == .image || kind == .video || kind == .music
        if generates, (estimate.promptChars ?? 0) == 0, estimate.usage.promptTokens == 0 {
            return .failure(APIError(.promptMissing))
        }
        let size = estimate.usage.size ?? (kind == .video ? estimate.usage.resolution : nil)
        if let violation = price.limits.violation(
            promptChars: estimate.promptChars.map(clampedInt),
            inputChars: estimate.inputChars.map(clampedInt),
            n: estimate.n.map(clampedInt), size: size)
        {
            return .failure(APIError(CatalogEntry(rawValue: violation.rawValue)!))
        }
        var usage = estimate.usage
        if usage.promptTokens == 0 {
            // Speech (an audio model priced on its input alone) is billed per character, which
            // the gateway reports as prompt tokens (docs/pricing.md §5): held at a quarter of
            // that, a tts-1 request was charged four times its hold.
            let speech = kind == .audio && price.prices.tokens.output == nil
            if speech, let chars = estimate.inputChars {
                usage.promptTokens = chars
            } else {
                let chars = estimate.promptChars ?? estimate.inputChars ?? 0
                usage.promptTokens = chars / 4 + (chars % 4 == 0 ? 0 : 1)
            }
        }
        switch kind {
        case .chat, .audio:
            if usage.completionTokens == 0 {
                usage.completionTokens = estimate.maxTokens ?? price.limits.defaultMaxTokens ?? fallbackMaxTokens
            }
        case .image:
            if usage.images == 0 { usage.images = estimate.n ?? 1 }
        case .video:
            if usage.videoSeconds.isZero {
                // Any n the body may carry (Int64): past Int64 it holds the most there is, no trap.
                let perVideo = price.limits.defaultSeconds ?? fallbackVideoSeconds
                let seconds = perVideo.multipliedReportingOverflow(by: estimate.n ?? 1)
                usage.videoSeconds = ExactDecimal(seconds.overflow ? .max : seconds.partialValue)
            }
        case .call, .music:
            if usage.calls == 0 { usage.calls = estimate.n ?? 1 }
        case .embedding, .rerank, .prediction:
            break
        }
        if price.prices.perCall != nil, usage.calls == 0 { usage.calls = 1 }
        if price.prices.perComputeSecond != nil, usage.predictTime.isZero, let seconds = price.limits.defaultSeconds {
            usage.predictTime = ExactDecimal(seconds)
        }
        return .success(usage)
    }

    /// The kind a sheet entry without `kind:` serves, from the prices it has.
    public static func inferredKind(_ prices: PriceFields) -> RequestKind {
        if prices.perVideoSecond != nil { return .video }
        if prices.perImage != nil, prices.tokens.isEmpty, prices.perComputeSecond == nil { return .image }
        if prices.perComputeSecond != nil { return .prediction }
        if prices.perCall != nil, prices.tokens.isEmpty { return .call }
        return .chat
    }

    private static func clampedInt(_ value: Int64) -> Int { Int(clamping: value) }
}
