import Foundation

extension LogLine {
    /// Parses a LiteLLM `StandardLoggingPayload`, the object LiteLLM's `generic_api` logger
    /// posts for every finished call (docs/ingest.md lists the mapping). Unknown keys are
    /// ignored; a member of the wrong type refuses the line (`invalid_json`).
    public static func parseLiteLLM(_ bytes: UnsafeBufferPointer<UInt8>) throws(IngestRejection) -> LogLine {
        var scanner = JSONScanner(bytes: bytes)
        var payload = LiteLLMPayload()
        do throws(UsageParseError) {
            try payload.read(from: &scanner)
            try scanner.expectEnd()
        } catch {
            var rejection = IngestRejection.invalidJSON(error)
            rejection.requestID = payload.requestID
            throw rejection
        }
        return payload.line
    }
}

/// The members of a `StandardLoggingPayload` that Tally bills from, as read.
struct LiteLLMPayload {
    var id: String?
    var callID: String?
    var model: String?
    var modelGroup: String?
    var provider: String?
    var start: Date?
    var end: Date?
    var promptTokens: Int64?
    var completionTokens: Int64?
    var status: String?
    var errorCode: String?
    var errorClass: String?
    var stream = false
    var ip: String?
    var traceID: String?
    var callType: String?
    var keyHash: String?
    /// `metadata.usage_object`: kept even when message logging is turned off.
    var metadataUsage: LiteLLMUsage?
    /// `response.usage`: the provider's answer as LiteLLM normalized it.
    var responseUsage: LiteLLMUsage?

    /// LiteLLM's own id of the call, the same on success and failure (`id` is the provider's
    /// response id on success).
    var requestID: String? { callID ?? id }

    mutating func read(from scanner: inout JSONScanner) throws(UsageParseError) {
        try scanner.readObject { scanner, key throws(UsageParseError) in
            switch key {
            case "id": id = try scanner.readOptionalString("id")
            case "litellm_call_id": callID = try scanner.readOptionalString("litellm_call_id")
            case "model": model = try scanner.readOptionalString("model")
            case "model_group": modelGroup = try scanner.readOptionalString("model_group")
            case "custom_llm_provider": provider = try scanner.readOptionalString("custom_llm_provider")
            case "startTime": start = try scanner.readUnixTime("startTime")
            case "endTime": end = try scanner.readUnixTime("endTime")
            case "prompt_tokens": promptTokens = try scanner.readOptionalCount("prompt_tokens")
            case "completion_tokens": completionTokens = try scanner.readOptionalCount("completion_tokens")
            case "status": status = try scanner.readOptionalString("status")
            case "stream": stream = try scanner.readBool("stream")
            case "requester_ip_address": ip = try scanner.readOptionalString("requester_ip_address")
            case "trace_id": traceID = try scanner.readOptionalString("trace_id")
            case "call_type": callType = try scanner.readOptionalString("call_type")
            case "error_information": try readErrorInformation(from: &scanner)
            case "metadata": try readMetadata(from: &scanner)
            case "response": responseUsage = try Self.readResponseUsage(from: &scanner)
            default: try scanner.skipValue()
            }
        }
    }

    private mutating func readMetadata(from scanner: inout JSONScanner) throws(UsageParseError) {
        try scanner.readOptionalObject { scanner, key throws(UsageParseError) in
            switch key {
            case "user_api_key_hash": keyHash = try scanner.readOptionalString("metadata.user_api_key_hash")
            case "usage_object": metadataUsage = try LiteLLMUsage.read(from: &scanner, "metadata.usage_object")
            default: try scanner.skipValue()
            }
        }
    }

    private mutating func readErrorInformation(from scanner: inout JSONScanner) throws(UsageParseError) {
        try scanner.readOptionalObject { scanner, key throws(UsageParseError) in
            switch key {
            case "error_code": errorCode = try scanner.readScalarText("error_information.error_code")
            case "error_class": errorClass = try scanner.readOptionalString("error_information.error_class")
            default: try scanner.skipValue()
            }
        }
    }

    /// `response` is whatever the provider answered (an object, a string, a list, or null);
    /// only an object's `usage` is read.
    private static func readResponseUsage(from scanner: inout JSONScanner) throws(UsageParseError) -> LiteLLMUsage? {
        guard scanner.index < scanner.bytes.count, scanner.bytes[scanner.index] == UInt8(ascii: "{") else {
            try scanner.skipValue()
            return nil
        }
        var usage: LiteLLMUsage?
        try scanner.readObject { scanner, key throws(UsageParseError) in
            guard key == "usage" else { return try scanner.skipValue() }
            usage = try LiteLLMUsage.read(from: &scanner, "response.usage")
        }
        return usage
    }

    var line: LogLine {
        var line = LogLine()
        line.requestID = requestID
        line.model = pricedModel
        line.keyHash = keyHash
        line.kind = LiteLLMCallType.kind(callType)
        line.stream = stream
        line.ip = ip
        line.tid = traceID.flatMap(Self.tid)
        if let start {
            line.createdAt = LogLine.storedInstant(start)
            if let end, end >= start { line.durationMs = Int64((end.timeIntervalSince(start) * 1000).rounded()) }
        }
        if status == "failure" {
            let code = errorCode.flatMap { Int64($0) }.flatMap { (400...599).contains($0) ? $0 : nil } ?? 500
            line.status = code
            line.error = code == 429 ? CatalogEntry.providerRateLimited.rawValue : (errorClass ?? "upstream_error")
        } else {
            line.status = 200
        }
        line.usage = usage
        return line
    }

    /// The name the caller asked for (`model_group`, the router's public name), else the
    /// deployment's model without its `custom_llm_provider/` prefix (`openai/gpt-4o` → `gpt-4o`).
    var pricedModel: String? {
        if let modelGroup { return modelGroup }
        guard let model, let provider, model.hasPrefix(provider + "/") else { return model }
        return String(model.dropFirst(provider.count + 1))
    }

    /// The top-level token counts, with the cache and audio parts from the nested usage object;
    /// nil when neither names a prompt or completion count (LiteLLM always logs both, 0
    /// included: a payload without them says nothing of what was used, and a success without
    /// usage is `missing_usage`, not charged 0).
    var usage: Usage? {
        let nested = metadataUsage ?? responseUsage ?? LiteLLMUsage()
        let prompt = promptTokens ?? nested.promptTokens
        let completion = completionTokens ?? nested.completionTokens
        guard prompt != nil || completion != nil else { return nil }
        return Usage(
            promptTokens: prompt ?? 0, completionTokens: completion ?? 0,
            cachedTokens: nested.cachedTokens, cacheWriteTokens: nested.cacheWriteTokens,
            audioInputTokens: nested.audioInputTokens, audioOutputTokens: nested.audioOutputTokens)
    }

    /// LiteLLM's trace id is a UUID; without its dashes it is a Tally tid (32 lowercase hex).
    static func tid(_ traceID: String) -> String? {
        let candidate = traceID.replacingOccurrences(of: "-", with: "").lowercased()
        return TraceID.isValid(candidate) ? candidate : nil
    }
}

/// The OpenAI-style usage object LiteLLM logs, with the provider-specific members LiteLLM adds
/// (Anthropic's `cache_read_input_tokens` / `cache_creation_input_tokens`). LiteLLM counts
/// cache reads and writes inside `prompt_tokens`, as Tally does; reasoning tokens are inside
/// `completion_tokens` and billed as output, so they need no member of their own.
struct LiteLLMUsage {
    var promptTokens: Int64?
    var completionTokens: Int64?
    var cachedTokens: Int64 = 0
    var cacheWriteTokens: Int64 = 0
    var audioInputTokens: Int64 = 0
    var audioOutputTokens: Int64 = 0

    /// The object (nil for null). `prompt_tokens_details` wins over the top-level provider
    /// members when both are present.
    static func read(from scanner: inout JSONScanner, _ name: String) throws(UsageParseError) -> LiteLLMUsage? {
        if scanner.readNull() { return nil }
        var usage = LiteLLMUsage()
        var prompt = PromptDetails()
        var cacheRead: Int64?
        var cacheCreation: Int64?
        try scanner.readObject { scanner, key throws(UsageParseError) in
            switch key {
            case "prompt_tokens": usage.promptTokens = try scanner.readOptionalCount("\(name).prompt_tokens")
            case "completion_tokens":
                usage.completionTokens = try scanner.readOptionalCount("\(name).completion_tokens")
            case "cache_read_input_tokens": cacheRead = try scanner.readOptionalCount("\(name).cache_read_input_tokens")
            case "cache_creation_input_tokens":
                cacheCreation = try scanner.readOptionalCount("\(name).cache_creation_input_tokens")
            case "prompt_tokens_details": try prompt.read(from: &scanner, "\(name).prompt_tokens_details")
            case "completion_tokens_details":
                usage.audioOutputTokens = try readAudioTokens(from: &scanner, "\(name).completion_tokens_details")
            default: try scanner.skipValue()
            }
        }
        usage.cachedTokens = prompt.cached ?? cacheRead ?? 0
        usage.cacheWriteTokens = prompt.cacheWrite ?? cacheCreation ?? 0
        usage.audioInputTokens = prompt.audio ?? 0
        return usage
    }

    /// `prompt_tokens_details`: cache reads, cache writes (OpenAI's and Anthropic's names),
    /// audio input.
    struct PromptDetails {
        var cached: Int64?
        var cacheWrite: Int64?
        var audio: Int64?

        mutating func read(from scanner: inout JSONScanner, _ name: String) throws(UsageParseError) {
            try scanner.readOptionalObject { scanner, key throws(UsageParseError) in
                switch key {
                case "cached_tokens": cached = try scanner.readOptionalCount("\(name).cached_tokens")
                case "cache_write_tokens", "cache_creation_tokens":
                    cacheWrite = try scanner.readOptionalCount("\(name).\(key)") ?? cacheWrite
                case "audio_tokens": audio = try scanner.readOptionalCount("\(name).audio_tokens")
                default: try scanner.skipValue()
                }
            }
        }
    }

    /// `completion_tokens_details.audio_tokens` (0 when absent or null).
    private static func readAudioTokens(from scanner: inout JSONScanner, _ name: String)
        throws(UsageParseError) -> Int64
    {
        var audio: Int64 = 0
        try scanner.readOptionalObject { scanner, key throws(UsageParseError) in
            guard key == "audio_tokens" else { return try scanner.skipValue() }
            audio = try scanner.readOptionalCount("\(name).audio_tokens") ?? 0
        }
        return audio
    }
}

/// LiteLLM `call_type` values and the kinds they map to; each also comes with an `a` prefix
/// (its async twin: `acompletion`). Other calls (files, batches, assistants …) are `call`.
enum LiteLLMCallType {
    static let kinds: [String: RequestKind] = [
        "completion": .chat, "text_completion": .chat, "responses": .chat, "anthropic_messages": .chat,
        "generate_content": .chat, "generate_content_stream": .chat,
        "embedding": .embedding, "rerank": .rerank,
        "image_generation": .image, "image_edit": .image,
        "transcription": .audio, "speech": .audio, "audio_transcription": .audio,
        "video_generation": .video, "create_video": .video,
    ]

    static func kind(_ callType: String?) -> RequestKind? {
        guard let callType else { return nil }
        if let kind = kinds[callType] { return kind }
        if callType.hasPrefix("a"), let kind = kinds[String(callType.dropFirst())] { return kind }
        return .call
    }
}
