/// What one request may plausibly use and cost, and the checks of its usage around rating that
/// ingest and `tally quote` share (docs/ingest.md): what ingest refuses, quote refuses with the
/// same reason, instead of pricing a request no line could be charged for.
public struct UsageLimits: Sendable {
    public var maxTokens: Int64 = 100_000_000
    public var maxImages: Int64 = 10_000
    public var maxCalls: Int64 = 1_000_000
    public var maxSeconds = ExactDecimal(86_400)
    /// The most one request may cost: 200,000,000 USD. A full batch of such lines still sums
    /// within `Int64` (a batch's charges are added up in Swift before PostgreSQL sees them).
    public var maxQuota: Int64 = 100_000_000_000_000

    public init() {}

    /// Every quantity within its bound (`absurd_usage`) and every part within its total
    /// (`invalid_usage`). Each quantity is compared on its own: lists of named quantities, built
    /// for every line, cost allocations on ingest's hot path.
    public func checkQuantities(_ usage: Usage) throws(IngestRejection) {
        func atMost<Value: Comparable>(_ limit: Value, _ name: String, _ value: Value) throws(IngestRejection) {
            guard value <= limit else {
                throw IngestRejection("absurd_usage", "\(name) \(value) is more than \(limit)")
            }
        }
        try atMost(maxTokens, "prompt_tokens", usage.promptTokens)
        try atMost(maxTokens, "completion_tokens", usage.completionTokens)
        try atMost(maxTokens, "cached_tokens", usage.cachedTokens)
        try atMost(maxTokens, "cache_write_tokens", usage.cacheWriteTokens)
        try atMost(maxTokens, "audio_input_tokens", usage.audioInputTokens)
        try atMost(maxTokens, "audio_output_tokens", usage.audioOutputTokens)
        try atMost(maxImages, "images", usage.images)
        try atMost(maxCalls, "calls", usage.calls)
        try atMost(maxSeconds, "video_seconds", usage.videoSeconds)
        try atMost(maxSeconds, "predict_time", usage.predictTime)
        if let misfit = usage.partsExceedingTotals { throw IngestRejection("invalid_usage", misfit) }
    }

    /// A successful request of `model` has what the model is priced by (``ModelPrice/measures(_:as:)``),
    /// else it would be charged 0 or its prompt alone unseen (`missing_usage`).
    public static func checkMeasured(
        _ usage: Usage, of model: String, as kind: RequestKind?, failed: Bool, sheet: PriceSheet
    ) throws(IngestRejection) {
        guard !failed, let price = sheet.models[model], !price.measures(usage, as: kind) else { return }
        throw IngestRejection(
            "missing_usage",
            "a successful request of \(model) needs what it is priced by in usage (images, video_seconds or "
                + "predict_time)")
    }

    /// The cost within `maxQuota` (`absurd_usage`).
    public func checkCost(_ rating: Rating) throws(IngestRejection) {
        guard !rating.capped, rating.units <= maxQuota else {
            throw IngestRejection(
                "absurd_usage", "the cost of this usage is more than \(maxQuota) units, the most one request may cost")
        }
    }
}
