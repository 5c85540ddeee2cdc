/// What kind of upstream request a log line or a model is (DESIGN §4).
public enum RequestKind: String, Sendable, Codable, CaseIterable {
    case chat, embedding, rerank, image, video, audio, music, call, prediction
}

/// The usage object of a gateway log line or an authorize estimate (DESIGN §4).
///
/// JSON keys: `prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens,
/// audio_input_tokens, audio_output_tokens, images, size, quality, video_seconds, resolution,
/// calls, predict_time`. Every key is optional (missing or `null` = 0 / nil); unknown keys are
/// ignored. Counts are integers; `video_seconds` and `predict_time` are exact decimals.
/// Negative values are rejected by both decoders; values built with the memberwise initializer
/// may be negative, and rating treats a negative quantity as 0.
///
/// Two ways to decode:
/// - ``parseJSON(_:)-(UnsafeBufferPointer<UInt8>)`` — a small exact byte scanner, for ingest; decimals are
///   read from the JSON text (exponents allowed, at most 12 fractional digits).
/// - `Codable` (`JSONDecoder`) — decimals come through `Double` and are accepted only when they
///   have at most 6 fractional digits (see ``ExactDecimal/init(exactly:)`` for the proof that
///   this is exact); a JSON string such as `"8.5"` is accepted too.
public struct Usage: Sendable, Equatable, Hashable {
    /// All input tokens, including cached, cache-write and audio input tokens.
    public var promptTokens: Int64
    /// All output tokens, including audio output tokens.
    public var completionTokens: Int64
    /// Input tokens read from the provider's prompt cache (part of `promptTokens`).
    public var cachedTokens: Int64
    /// Input tokens written to the provider's prompt cache (part of `promptTokens`).
    public var cacheWriteTokens: Int64
    /// Audio input tokens (part of `promptTokens`).
    public var audioInputTokens: Int64
    /// Audio output tokens (part of `completionTokens`).
    public var audioOutputTokens: Int64
    /// Number of images produced (or the image count of a Replicate prediction).
    public var images: Int64
    /// Image size, e.g. `1024x1024`.
    public var size: String?
    /// Image quality, e.g. `hd`.
    public var quality: String?
    /// Seconds of video produced.
    public var videoSeconds: ExactDecimal
    /// Video resolution, e.g. `1080p`.
    public var resolution: String?
    /// Number of billable calls (per-call models).
    public var calls: Int64
    /// Replicate `metrics.predict_time`, in seconds.
    public var predictTime: ExactDecimal

    /// Creates a usage; every quantity defaults to 0.
    public init(
        promptTokens: Int64 = 0, completionTokens: Int64 = 0, cachedTokens: Int64 = 0,
        cacheWriteTokens: Int64 = 0, audioInputTokens: Int64 = 0, audioOutputTokens: Int64 = 0,
        images: Int64 = 0, size: String? = nil, quality: String? = nil,
        videoSeconds: ExactDecimal = .zero, resolution: String? = nil, calls: Int64 = 0,
        predictTime: ExactDecimal = .zero
    ) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedTokens = cachedTokens
        self.cacheWriteTokens = cacheWriteTokens
        self.audioInputTokens = audioInputTokens
        self.audioOutputTokens = audioOutputTokens
        self.images = images
        self.size = size
        self.quality = quality
        self.videoSeconds = videoSeconds
        self.resolution = resolution
        self.calls = calls
        self.predictTime = predictTime
    }

    /// Why the parts do not fit their totals, or nil when they do: cached, cache-write and audio
    /// input tokens are parts of `prompt_tokens`, audio output tokens of `completion_tokens`. A
    /// count in Anthropic's convention (input tokens without the cache reads) would otherwise
    /// charge its uncached input at 0.
    public var partsExceedingTotals: String? {
        let inputParts = cachedTokens.addingReportingOverflow(cacheWriteTokens)
        let allInput = inputParts.partialValue.addingReportingOverflow(audioInputTokens)
        if inputParts.overflow || allInput.overflow || allInput.partialValue > promptTokens {
            return "cached_tokens + cache_write_tokens + audio_input_tokens (\(cachedTokens) + \(cacheWriteTokens) + "
                + "\(audioInputTokens)) are part of prompt_tokens (\(promptTokens)) and cannot exceed it"
        }
        if audioOutputTokens > completionTokens {
            return "audio_output_tokens (\(audioOutputTokens)) are part of completion_tokens (\(completionTokens)) "
                + "and cannot exceed it"
        }
        return nil
    }

    /// The JSON key of the first negative quantity, or nil when none is negative.
    public var firstNegativeField: String? {
        if promptTokens < 0 { return "prompt_tokens" }
        if completionTokens < 0 { return "completion_tokens" }
        if cachedTokens < 0 { return "cached_tokens" }
        if cacheWriteTokens < 0 { return "cache_write_tokens" }
        if audioInputTokens < 0 { return "audio_input_tokens" }
        if audioOutputTokens < 0 { return "audio_output_tokens" }
        if images < 0 { return "images" }
        if videoSeconds.isNegative { return "video_seconds" }
        if calls < 0 { return "calls" }
        if predictTime.isNegative { return "predict_time" }
        return nil
    }

    /// True when every quantity is zero (strings are not looked at).
    public var isZero: Bool {
        promptTokens == 0 && completionTokens == 0 && cachedTokens == 0 && cacheWriteTokens == 0
            && audioInputTokens == 0 && audioOutputTokens == 0 && images == 0 && videoSeconds.isZero
            && calls == 0 && predictTime.isZero
    }
}

extension Usage: Codable {
    enum CodingKeys: String, CodingKey {
        case promptTokens = "prompt_tokens"
        case completionTokens = "completion_tokens"
        case cachedTokens = "cached_tokens"
        case cacheWriteTokens = "cache_write_tokens"
        case audioInputTokens = "audio_input_tokens"
        case audioOutputTokens = "audio_output_tokens"
        case images, size, quality
        case videoSeconds = "video_seconds"
        case resolution, calls
        case predictTime = "predict_time"
    }

    /// Decodes the DESIGN §4 usage object; see the type's documentation for the rules.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        func count(_ key: CodingKeys) throws -> Int64 {
            let value = try container.decodeIfPresent(Int64.self, forKey: key) ?? 0
            if value < 0 {
                throw DecodingError.dataCorruptedError(
                    forKey: key, in: container,
                    debugDescription: "\(key.stringValue): negative value \(value)")
            }
            return value
        }
        func text(_ key: CodingKeys) throws -> String? {
            let value = try container.decodeIfPresent(String.self, forKey: key)
            return value?.isEmpty == true ? nil : value
        }
        func decimal(_ key: CodingKeys) throws -> ExactDecimal {
            guard container.contains(key), try !container.decodeNil(forKey: key) else { return .zero }
            let value: ExactDecimal
            if let number = try? container.decode(Double.self, forKey: key) {
                guard let exact = ExactDecimal(exactly: number) else {
                    throw DecodingError.dataCorruptedError(
                        forKey: key, in: container,
                        debugDescription:
                            "\(key.stringValue): more than 6 fractional digits or too large; send it as a string")
                }
                value = exact
            } else {
                let string = try container.decode(String.self, forKey: key)
                do {
                    value = try ExactDecimal(json: string)
                } catch {
                    throw DecodingError.dataCorruptedError(
                        forKey: key, in: container,
                        debugDescription: "\(key.stringValue): \(error.description)")
                }
            }
            if value.isNegative {
                throw DecodingError.dataCorruptedError(
                    forKey: key, in: container,
                    debugDescription: "\(key.stringValue): negative value \(value)")
            }
            return value
        }
        self.init(
            promptTokens: try count(.promptTokens), completionTokens: try count(.completionTokens),
            cachedTokens: try count(.cachedTokens), cacheWriteTokens: try count(.cacheWriteTokens),
            audioInputTokens: try count(.audioInputTokens), audioOutputTokens: try count(.audioOutputTokens),
            images: try count(.images), size: try text(.size), quality: try text(.quality),
            videoSeconds: try decimal(.videoSeconds), resolution: try text(.resolution),
            calls: try count(.calls), predictTime: try decimal(.predictTime))
    }

    /// Encodes every key; missing strings as `null`. Decimals are JSON numbers when they have at
    /// most 6 fractional digits and magnitude below 10^9 (so the shortest binary64 text is the
    /// decimal itself), otherwise JSON strings; both decoders accept both forms.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(promptTokens, forKey: .promptTokens)
        try container.encode(completionTokens, forKey: .completionTokens)
        try container.encode(cachedTokens, forKey: .cachedTokens)
        try container.encode(cacheWriteTokens, forKey: .cacheWriteTokens)
        try container.encode(audioInputTokens, forKey: .audioInputTokens)
        try container.encode(audioOutputTokens, forKey: .audioOutputTokens)
        try container.encode(images, forKey: .images)
        try container.encode(size, forKey: .size)
        try container.encode(quality, forKey: .quality)
        try Self.encodeDecimal(videoSeconds, in: &container, forKey: .videoSeconds)
        try container.encode(resolution, forKey: .resolution)
        try container.encode(calls, forKey: .calls)
        try Self.encodeDecimal(predictTime, in: &container, forKey: .predictTime)
    }

    private static func encodeDecimal(
        _ value: ExactDecimal, in container: inout KeyedEncodingContainer<CodingKeys>,
        forKey key: CodingKeys
    ) throws {
        if value.scale == 0, let integer = Int64(exactly: value.mantissa) {
            try container.encode(integer, forKey: key)
        } else if value.scale <= 6,
            case let micros = value.mantissa * Int128(Pow10.of(6 - value.scale)),
            micros.magnitude < 1_000_000_000_000_000
        {
            try container.encode(Double(Int64(micros)) / 1_000_000, forKey: key)
        } else {
            try container.encode(value.description, forKey: key)
        }
    }
}
