import Foundation

/// A validated price sheet (DESIGN §3): group ratios and per-model prices in USD.
///
/// Sheets are made only by ``parse(_:)``, which checks every rule in `docs/pricing.md`, so a
/// `PriceSheet` value never holds a negative price, a ratio ≤ 0, unordered tiers or a dangling
/// group or model name. ``canonicalJSON()`` prints it in a form ``parse(_:)`` reads back equal.
public struct PriceSheet: Sendable, Equatable {
    /// When the sheet takes effect, if the sheet says (`effective_from`, RFC 3339).
    public var effectiveFrom: Date? { effectiveFromTime?.date }
    /// Groups by name.
    public let groups: [String: PriceGroup]
    /// Models by name.
    public let models: [String: ModelPrice]

    let effectiveFromTime: RFC3339Time?

    init(effectiveFromTime: RFC3339Time?, groups: [String: PriceGroup], models: [String: ModelPrice]) {
        self.effectiveFromTime = effectiveFromTime
        self.groups = groups
        self.models = models
    }

    /// `effective_from` as written canonically (`2026-11-01T00:00:00Z`), if any.
    public var effectiveFromText: String? { effectiveFromTime?.text }

    /// Group names, sorted.
    public var groupNames: [String] { groups.keys.sorted() }
    /// Model names, sorted.
    public var modelNames: [String] { models.keys.sorted() }

    /// True when `model` may be used in `group` (both exist and the group's `models:` list, if
    /// any, names the model).
    public func isAvailable(model: String, group: String) -> Bool {
        guard models[model] != nil, let spec = groups[group] else { return false }
        return spec.allows(model)
    }
}

/// A group: a ratio that multiplies every price, and optionally the only models it may use.
public struct PriceGroup: Sendable, Equatable {
    /// The multiplier, > 0.
    public let ratio: ExactDecimal
    /// Free text for `/api/group` and `/api/pricing`.
    public let description: String?
    /// When present, the only models this group may use (in sheet order).
    public let models: [String]?
    let modelSet: Set<String>?

    init(ratio: ExactDecimal, description: String?, models: [String]?) {
        self.ratio = ratio
        self.description = description
        self.models = models
        self.modelSet = models.map(Set.init)
    }

    /// True when the group may use `model` (no `models:` list allows every model).
    public func allows(_ model: String) -> Bool { modelSet?.contains(model) ?? true }
}

/// Token prices in USD per 1,000,000 tokens. A nil field has no price of its own.
public struct TokenPrices: Sendable, Equatable {
    /// Input (prompt) tokens.
    public internal(set) var input: ExactDecimal?
    /// Output (completion) tokens.
    public internal(set) var output: ExactDecimal?
    /// Cached input tokens; falls back to `input`.
    public internal(set) var cachedInput: ExactDecimal?
    /// Cache-write input tokens; falls back to `input`.
    public internal(set) var cacheWrite: ExactDecimal?
    /// Audio input tokens; falls back to `input`.
    public internal(set) var audioInput: ExactDecimal?
    /// Audio output tokens; falls back to `output`.
    public internal(set) var audioOutput: ExactDecimal?

    init(
        input: ExactDecimal? = nil, output: ExactDecimal? = nil, cachedInput: ExactDecimal? = nil,
        cacheWrite: ExactDecimal? = nil, audioInput: ExactDecimal? = nil, audioOutput: ExactDecimal? = nil
    ) {
        self.input = input
        self.output = output
        self.cachedInput = cachedInput
        self.cacheWrite = cacheWrite
        self.audioInput = audioInput
        self.audioOutput = audioOutput
    }

    /// True when no field has a price.
    public var isEmpty: Bool {
        input == nil && output == nil && cachedInput == nil && cacheWrite == nil && audioInput == nil
            && audioOutput == nil
    }

    /// These prices with every field that `other` names replaced by `other`'s.
    func overridden(by other: TokenPrices) -> TokenPrices {
        TokenPrices(
            input: other.input ?? input, output: other.output ?? output,
            cachedInput: other.cachedInput ?? cachedInput, cacheWrite: other.cacheWrite ?? cacheWrite,
            audioInput: other.audioInput ?? audioInput, audioOutput: other.audioOutput ?? audioOutput)
    }

    /// (sheet field name, price) of the priced fields, in a fixed order.
    var namedFields: [(String, ExactDecimal)] {
        var fields: [(String, ExactDecimal)] = []
        if let input { fields.append(("input", input)) }
        if let output { fields.append(("output", output)) }
        if let cachedInput { fields.append(("cached_input", cachedInput)) }
        if let cacheWrite { fields.append(("cache_write", cacheWrite)) }
        if let audioInput { fields.append(("audio_input", audioInput)) }
        if let audioOutput { fields.append(("audio_output", audioOutput)) }
        return fields
    }
}

/// The price fields a model has and a `group_prices` entry may replace.
public struct PriceFields: Sendable, Equatable {
    /// Token prices (USD per 1M tokens).
    public internal(set) var tokens: TokenPrices
    /// USD per image, keyed `size/quality`, `size` or `default`.
    public internal(set) var perImage: [String: ExactDecimal]?
    /// USD per second of video, keyed by resolution or `default`.
    public internal(set) var perVideoSecond: [String: ExactDecimal]?
    /// USD per call.
    public internal(set) var perCall: ExactDecimal?
    /// USD per second of compute (Replicate `predict_time`).
    public internal(set) var perComputeSecond: ExactDecimal?
    /// USD charged for a failed request; nil = failed requests are free.
    public internal(set) var chargeFailed: ExactDecimal?

    init(
        tokens: TokenPrices = TokenPrices(), perImage: [String: ExactDecimal]? = nil,
        perVideoSecond: [String: ExactDecimal]? = nil, perCall: ExactDecimal? = nil,
        perComputeSecond: ExactDecimal? = nil, chargeFailed: ExactDecimal? = nil
    ) {
        self.tokens = tokens
        self.perImage = perImage
        self.perVideoSecond = perVideoSecond
        self.perCall = perCall
        self.perComputeSecond = perComputeSecond
        self.chargeFailed = chargeFailed
    }

    /// True when some field other than `charge_failed` has a price.
    public var hasPrice: Bool {
        !tokens.isEmpty || perImage != nil || perVideoSecond != nil || perCall != nil || perComputeSecond != nil
    }

    /// True when `usage` has some of what these prices charge by. A model priced by tokens or by
    /// the call always measures a request (zero tokens is a cost of 0, a call is counted anyway);
    /// one priced only by images, video or compute seconds measures nothing without them, and a
    /// successful request of it without them (a LiteLLM image call, whose payload carries no
    /// image count) would be charged 0 unseen.
    public func measures(_ usage: Usage) -> Bool {
        !tokens.isEmpty || perCall != nil || (perImage != nil && usage.images > 0)
            || (perVideoSecond != nil && usage.videoSeconds > .zero)
            || (perComputeSecond != nil && usage.predictTime > .zero)
    }

    /// True when `per_call` is the only price (besides `charge_failed`): such a model bills a
    /// request with `calls: 0` as one call.
    public var isPerCallOnly: Bool {
        perCall != nil && tokens.isEmpty && perImage == nil && perVideoSecond == nil && perComputeSecond == nil
    }

    /// These prices with every field that `other` names replaced by `other`'s (maps replace
    /// maps whole).
    func overridden(by other: PriceFields) -> PriceFields {
        PriceFields(
            tokens: tokens.overridden(by: other.tokens), perImage: other.perImage ?? perImage,
            perVideoSecond: other.perVideoSecond ?? perVideoSecond, perCall: other.perCall ?? perCall,
            perComputeSecond: other.perComputeSecond ?? perComputeSecond,
            chargeFailed: other.chargeFailed ?? chargeFailed)
    }

    /// (display name, price) of every priced field, e.g. `per_image.1024x1024/hd`, in a fixed order.
    var namedFields: [(String, ExactDecimal)] {
        var fields = tokens.namedFields
        for (key, price) in (perImage ?? [:]).sorted(by: { $0.key < $1.key }) {
            fields.append(("per_image.\(key)", price))
        }
        for (key, price) in (perVideoSecond ?? [:]).sorted(by: { $0.key < $1.key }) {
            fields.append(("per_video_second.\(key)", price))
        }
        if let perCall { fields.append(("per_call", perCall)) }
        if let perComputeSecond { fields.append(("per_compute_second", perComputeSecond)) }
        if let chargeFailed { fields.append(("charge_failed", chargeFailed)) }
        return fields
    }
}

/// A price tier: when a request's `prompt_tokens` exceeds `abovePromptTokens`, the tier's
/// prices replace the base prices they name for the whole request.
public struct PriceTier: Sendable, Equatable {
    /// The threshold; the tier applies when `prompt_tokens > abovePromptTokens`.
    public let abovePromptTokens: Int64
    /// The token prices of the tier.
    public let prices: TokenPrices
}

/// Request limits `authorize` checks against an estimate (DESIGN §7's 400 errors).
public struct ModelLimits: Sendable, Equatable {
    /// Most characters in a prompt (`prompt_too_long`).
    public internal(set) var maxPromptChars: Int64?
    /// Most characters of input text (`text_too_long`).
    public internal(set) var maxInputChars: Int64?
    /// Largest `n` (images per request) (`n_not_within_range`).
    public internal(set) var maxN: Int64?
    /// Allowed image sizes (`size_not_supported`).
    public internal(set) var sizes: [String]?
    /// `max_tokens` to assume in an estimate that gives none.
    public internal(set) var defaultMaxTokens: Int64?
    /// Seconds to assume in an estimate that gives none: a video's `video_seconds` (per video),
    /// or the `predict_time` of a model priced per compute second.
    public internal(set) var defaultSeconds: Int64?

    init() {}

    /// True when no limit is set.
    public var isEmpty: Bool {
        maxPromptChars == nil && maxInputChars == nil && maxN == nil && sizes == nil && defaultMaxTokens == nil
            && defaultSeconds == nil
    }

    /// The first limit a request breaks, checked in the order prompt, input, n, size; nil when
    /// none. A nil argument is not checked. `n` must be 1…maxN when `max_n` is set.
    public func violation(
        promptChars: Int? = nil, inputChars: Int? = nil, n: Int? = nil,
        size: String? = nil
    ) -> LimitViolation? {
        if let maxPromptChars, let promptChars, promptChars > maxPromptChars { return .promptTooLong }
        if let maxInputChars, let inputChars, inputChars > maxInputChars { return .textTooLong }
        // Fewer than one is invalid whatever the model allows: it would hold nothing.
        if let n, n < 1 || n > (maxN ?? .max) { return .nNotWithinRange }
        if let sizes, let size, !size.isEmpty, !sizes.contains(size) { return .sizeNotSupported }
        return nil
    }
}

/// A broken model limit; the raw value is the DESIGN §7 catalog code.
public enum LimitViolation: String, Sendable, Equatable, CaseIterable {
    case promptTooLong = "prompt_too_long"
    case textTooLong = "text_too_long"
    case nNotWithinRange = "n_not_within_range"
    case sizeNotSupported = "size_not_supported"
}

/// Everything a sheet says about one model.
public struct ModelPrice: Sendable, Equatable {
    /// The base prices.
    public let prices: PriceFields
    /// Tiers by strictly increasing threshold.
    public let tiers: [PriceTier]
    /// Per-group prices used instead of ratio × base ("price difference").
    public let groupPrices: [String: PriceFields]
    /// Limits for `authorize`.
    public let limits: ModelLimits
    /// What kind of requests the model serves, if the sheet says.
    public let kind: RequestKind?
    /// Endpoint types for `/v1/models` (`openai`, `anthropic`, `gemini`, …), if the sheet says.
    public let endpointTypes: [String]?

    /// True when `usage` has what a successful request of this model is billed by (see
    /// ``PriceFields/measures(_:)``). A request that makes images or video (by the line's own
    /// `kind`, else the model's) of a model priced by them needs them even when a token price
    /// comes with them: a successful `gpt-image-1` line without an image count would be charged
    /// its prompt tokens alone. (Compute seconds measure an image model priced by them too.)
    public func measures(_ usage: Usage, as requestKind: RequestKind? = nil) -> Bool {
        switch requestKind ?? servedKind {
        case .image where prices.perImage != nil:
            usage.images > 0 || (prices.perComputeSecond != nil && usage.predictTime > .zero)
        case .video where prices.perVideoSecond != nil: usage.videoSeconds > .zero
        default: prices.measures(usage)
        }
    }

    /// The kind of requests the model serves: the sheet's `kind`, else inferred from its prices.
    public var servedKind: RequestKind { kind ?? HoldEstimator.inferredKind(prices) }

    /// The tier for a request with `promptTokens` input tokens: the last one whose threshold
    /// is below it.
    public func tier(promptTokens: Int64) -> PriceTier? {
        var low = 0
        var high = tiers.count
        while low < high {
            let middle = (low + high) / 2
            if tiers[middle].abovePromptTokens < promptTokens { low = middle + 1 } else { high = middle }
        }
        return low == 0 ? nil : tiers[low - 1]
    }
}

/// A time an operator types (a version's `effective_from`, `tally quote --at`), read as strictly
/// as a price sheet's own `effective_from`: an offset without its colon, a trailing zone name,
/// a month 13 are refused, where a lenient reader would move the instant without a word.
public enum OperatorTime {
    /// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, or with `dateOnly` also `YYYY-MM-DD`
    /// (midnight UTC); nil for anything else.
    public static func parse(_ text: String, dateOnly: Bool = false) -> Date? {
        let candidate = dateOnly && text.utf8.count == 10 ? text + "T00:00:00Z" : text
        return RFC3339Time(candidate)?.date
    }
}

/// An RFC 3339 time kept as integers so it prints back exactly.
struct RFC3339Time: Sendable, Equatable {
    var seconds: Int64
    var nanoseconds: Int32

    var date: Date { Date(timeIntervalSince1970: Double(seconds) + Double(nanoseconds) / 1_000_000_000) }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (`t` or a space may replace `T`,
    /// `z` may replace `Z`; at most 9 fractional digits; no leap second).
    init?(_ text: String) {
        let bytes = Array(text.utf8)
        var index = 0
        func number(_ width: Int) -> Int? {
            guard index + width <= bytes.count else { return nil }
            var value = 0
            for offset in 0..<width {
                let byte = bytes[index + offset]
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + Int(byte - 48)
            }
            index += width
            return value
        }
        func literal(_ allowed: [UInt8]) -> Bool {
            guard index < bytes.count, allowed.contains(bytes[index]) else { return false }
            index += 1
            return true
        }
        guard let year = number(4), literal([45]), let month = number(2), literal([45]), let day = number(2),
            literal([84, 116, 32]), let hour = number(2), literal([58]), let minute = number(2), literal([58]),
            let second = number(2)
        else { return nil }
        var nanos = 0
        if literal([46]) {
            var digits = 0
            while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57 {
                guard digits < 9 else { return nil }
                nanos = nanos * 10 + Int(bytes[index] - 48)
                digits += 1
                index += 1
            }
            guard digits > 0 else { return nil }
            for _ in digits..<9 { nanos *= 10 }
        }
        var offsetSeconds = 0
        if literal([90, 122]) {
            offsetSeconds = 0
        } else if index < bytes.count, bytes[index] == 43 || bytes[index] == 45 {
            let negative = bytes[index] == 45
            index += 1
            guard let offsetHours = number(2), literal([58]), let offsetMinutes = number(2),
                offsetHours <= 23, offsetMinutes <= 59
            else { return nil }
            offsetSeconds = (offsetHours * 3600 + offsetMinutes * 60) * (negative ? -1 : 1)
        } else {
            return nil
        }
        guard index == bytes.count, (1...12).contains(month), day >= 1,
            day <= Self.daysInMonth(year: year, month: month), hour <= 23, minute <= 59, second <= 59
        else { return nil }
        let days = Self.daysFromCivil(year: year, month: month, day: day)
        seconds = Int64(days) * 86_400 + Int64(hour * 3600 + minute * 60 + second - offsetSeconds)
        nanoseconds = Int32(nanos)
    }

    /// UTC text, fraction only when non-zero: `2026-11-01T00:00:00Z`, `…:00.5Z`.
    var text: String {
        let days =
            Int(seconds.quotientAndRemainder(dividingBy: 86_400).quotient)
            - (seconds % 86_400 < 0 ? 1 : 0)
        let secondOfDay = Int(seconds - Int64(days) * 86_400)
        let (year, month, day) = Self.civilFromDays(days)
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        var yearText = String(year)
        while yearText.count < 4 { yearText = "0" + yearText }
        var result =
            "\(yearText)-\(two(month))-\(two(day))T\(two(secondOfDay / 3600)):\(two(secondOfDay / 60 % 60)):\(two(secondOfDay % 60))"
        if nanoseconds != 0 {
            var fraction = String(nanoseconds)
            fraction = String(repeating: "0", count: 9 - fraction.count) + fraction
            while fraction.hasSuffix("0") { fraction.removeLast() }
            result += "." + fraction
        }
        return result + "Z"
    }

    static func daysInMonth(year: Int, month: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    static func civilFromDays(_ days: Int) -> (Int, Int, Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
