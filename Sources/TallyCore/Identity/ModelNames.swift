import Foundation

/// Model names as users write them: comma-separated lists (new-api's `model_limits`, a
/// channel's `models`), and what `/v1/models` says about a model it has no sheet entry for.
public enum ModelNames {
    /// Longest model name accepted.
    public static let maximumLength = 200
    /// Most names in one list.
    public static let maximumCount = 2000

    /// True when a key's model limits allow `model`: named as it is, or as the family new-api
    /// checks limits against (its `FormatMatchingModelName`): a Gemini 2.5 model with a thinking
    /// budget (`gemini-2.5-flash-thinking-1024`) as `gemini-2.5-flash-thinking-*`, a GPTs model
    /// (`gpt-4-gizmo-g-abc`) as `gpt-4-gizmo-*`. new-api's relay checks the family name alone
    /// and its model list either; Tally does either in both, so a model it lists is one it serves.
    public static func limitsAllow(_ allowed: Set<String>, _ model: String) -> Bool {
        allowed.contains(model) || allowed.contains(limitFamily(of: model))
    }

    /// The family name of `model` in a key's model limits (itself for most models).
    static func limitFamily(of model: String) -> String {
        for family in ["gemini-2.5-flash-lite", "gemini-2.5-flash", "gemini-2.5-pro"] where model.hasPrefix(family) {
            return model.contains("-thinking-") ? family + "-thinking-*" : model
        }
        for family in ["gpt-4-gizmo", "gpt-4o-gizmo"] where model.hasPrefix(family) { return family + "-*" }
        return model
    }

    /// Splits a list on commas and newlines, trims each name, drops empty ones and duplicates
    /// (first occurrence wins). `field` names the field in the error.
    public static func parseList(_ text: String, field: String) throws(ModelNameError) -> [String] {
        try validate(
            text.split(whereSeparator: { $0 == "," || $0 == "\n" || $0 == "\r" }).map(String.init), field: field)
    }

    /// Trims and checks names given one by one (a JSON array); same rules as `parseList`.
    public static func validate(_ names: [String], field: String) throws(ModelNameError) -> [String] {
        var seen = Set<String>()
        var result: [String] = []
        for raw in names {
            let name = raw.trimmingCharacters(in: .whitespaces)
            if name.isEmpty { continue }
            guard name.count <= maximumLength else {
                throw ModelNameError(
                    message: "\(field): model name \"\(name.prefix(40))…\" is longer than \(maximumLength) characters")
            }
            guard !name.contains(","), name.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7f }) else {
                throw ModelNameError(
                    message: "\(field): model name \"\(name.prefix(40))\" contains a comma or a control character")
            }
            if seen.insert(name).inserted { result.append(name) }
        }
        guard result.count <= maximumCount else {
            throw ModelNameError(message: "\(field): at most \(maximumCount) models are allowed, got \(result.count)")
        }
        return result
    }

    /// new-api's `created` for every model in `/v1/models`.
    public static let listCreated: Int64 = 1_626_777_600

    /// The endpoint types of `/v1/models` (new-api's `supported_endpoint_types`) for a model the
    /// price sheet says nothing about, from the family its name shows. Values are new-api's:
    /// `openai`, `anthropic`, `gemini`, `jina-rerank`, `image-generation`, `embeddings`,
    /// `openai-video`.
    public static func inferredEndpointTypes(_ model: String) -> [String] {
        let name = model.lowercased()
        func has(_ needles: String...) -> Bool { needles.contains { name.contains($0) } }
        if has("embedding", "embed-", "bge-", "-embed") { return ["embeddings"] }
        if has("rerank") { return ["jina-rerank"] }
        if has(
            "dall-e", "gpt-image", "flux", "ideogram", "seedream", "midjourney", "mj_", "stable-diffusion", "sdxl",
            "imagen")
        {
            return ["image-generation"]
        }
        if has("veo", "kling", "luma", "runway", "hailuo", "conch", "seedance", "sora", "video") {
            return ["openai-video"]
        }
        if name.hasPrefix("claude") || has("/claude") { return ["anthropic", "openai"] }
        if name.hasPrefix("gemini") || has("/gemini") { return ["gemini", "openai"] }
        return ["openai"]
    }

    /// `owned_by` of `/v1/models` for a model, from the vendor its name shows ("custom" when
    /// the name shows none, as new-api answers for custom models).
    public static func inferredOwner(_ model: String) -> String {
        let name = model.lowercased()
        if let slash = name.firstIndex(of: "/") { return String(name[..<slash]) }
        let prefixes: [(String, String)] = [
            ("gpt-", "openai"), ("o1", "openai"), ("o3", "openai"), ("o4", "openai"), ("chatgpt", "openai"),
            ("dall-e", "openai"), ("whisper", "openai"), ("tts-", "openai"), ("text-embedding", "openai"),
            ("sora", "openai"), ("claude", "anthropic"), ("gemini", "google"), ("veo", "google"),
            ("imagen", "google"), ("deepseek", "deepseek"), ("qwen", "qwen"), ("glm", "zhipu"),
            ("doubao", "doubao"), ("seedream", "doubao"), ("seedance", "doubao"), ("kling", "kling"),
            ("flux", "black-forest-labs"), ("ideogram", "ideogram"), ("midjourney", "midjourney"),
            ("suno", "suno"), ("luma", "luma"), ("runway", "runway"), ("hailuo", "minimax"),
            ("mistral", "mistral"), ("llama", "meta"), ("grok", "xai"),
        ]
        return prefixes.first { name.hasPrefix($0.0) }?.1 ?? "custom"
    }
}

public struct ModelNameError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
