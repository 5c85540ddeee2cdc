/// Why a request could not be priced.
public enum RatingError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The sheet has no such model.
    case unknownModel(String)
    /// The sheet has no such group.
    case unknownGroup(String)
    /// The group's `models:` list does not name the model.
    case modelNotInGroup(model: String, group: String)
    /// No `per_image` key matches the size/quality.
    case sizeNotSupported(size: String?, quality: String?)
    /// No `per_video_second` key matches the resolution (the same catalog code,
    /// `size_not_supported`).
    case resolutionNotSupported(String?)

    /// E.g. `unknown model "gpt-9"`, `size not supported: size "512x512", quality "hd"`.
    public var description: String {
        switch self {
        case .unknownModel(let model): "unknown model \(PriceText.quoted(model))"
        case .unknownGroup(let group): "unknown group \(PriceText.quoted(group))"
        case .modelNotInGroup(let model, let group):
            "model \(PriceText.quoted(model)) is not available in group \(PriceText.quoted(group))"
        case .sizeNotSupported(let size, let quality):
            "size not supported: size \(size.map(PriceText.quoted) ?? "none"), quality \(quality.map(PriceText.quoted) ?? "none")"
        case .resolutionNotSupported(let resolution):
            "size not supported: resolution \(resolution.map(PriceText.quoted) ?? "none")"
        }
    }
}

/// One line of a rating breakdown.
public struct RatingComponent: Sendable, Equatable, Codable {
    /// `input`, `cached_input`, `cache_write`, `audio_input`, `output`, `audio_output`,
    /// `image 1024x1024/hd`, `video 1080p`, `call`, `compute`, `charge_failed`.
    public let name: String
    /// The quantity billed: `1000`, `8.5`.
    public let quantity: String
    /// What the price is per: `1M tokens`, `image`, `second`, `call`, `failed request`.
    public let per: String
    /// The USD price per `per` used (the model's, tier's or group's own price; the group ratio
    /// is not in it).
    public let unitPriceUSD: String
    /// This component's exact share of the cost in units, ratio applied, before rounding
    /// (`"1250"`, `"2.5"`); the components add up to the unrounded total.
    public let amountUnits: String

    /// Creates a component.
    public init(name: String, quantity: String, per: String, unitPriceUSD: String, amountUnits: String) {
        self.name = name
        self.quantity = quantity
        self.per = per
        self.unitPriceUSD = unitPriceUSD
        self.amountUnits = amountUnits
    }

    enum CodingKeys: String, CodingKey {
        case name, quantity, per
        case unitPriceUSD = "unit_price_usd"
        case amountUnits = "amount_units"
    }
}

/// The price of one request.
public struct Rating: Sendable, Equatable, Codable {
    /// The charge in quota units, rounded half up once, at least 1 when anything priced was
    /// used, at most `Int64.max`.
    public let units: Int64
    /// True when the exact cost exceeded `Int64.max` units and `units` was capped.
    public let capped: Bool
    /// The ratio applied to the sum: the group's ratio, or 1 when the group has its own prices.
    public let groupRatio: ExactDecimal
    /// True when the model's `group_prices` for the group were used (and no ratio).
    public let groupPriceApplied: Bool
    /// The threshold of the tier used, if any.
    public let tierAbove: Int64?
    /// True when the request was rated as failed.
    public let failed: Bool
    /// The breakdown, filled only when `rate(…, breakdown: true)`.
    public let components: [RatingComponent]

    /// Creates a rating (for tests and callers that store and reload ratings).
    public init(
        units: Int64, capped: Bool = false, groupRatio: ExactDecimal = .one, groupPriceApplied: Bool = false,
        tierAbove: Int64? = nil, failed: Bool = false, components: [RatingComponent] = []
    ) {
        self.units = units
        self.capped = capped
        self.groupRatio = groupRatio
        self.groupPriceApplied = groupPriceApplied
        self.tierAbove = tierAbove
        self.failed = failed
        self.components = components
    }

    /// `units` in USD with 6 decimals.
    public var usd: String { Money.formatUSD(units: units) }

    enum CodingKeys: String, CodingKey {
        case units, capped, failed, components
        case groupRatio = "group_ratio"
        case groupPriceApplied = "group_price_applied"
        case tierAbove = "tier_above"
    }

    /// A human-readable quote: one line per component, then the total in units and USD.
    ///
    ///     gpt-4o, group vip (ratio 0.8)
    ///       input         1000 × 2.5 USD per 1M tokens = 1000 units
    ///       output         500 × 10 USD per 1M tokens = 2000 units
    ///     total 3000 units = 0.006000 USD
    public func explainText(model: String, group: String) -> String {
        var lines: [String] = []
        var header = "\(model), group \(group)"
        header += groupPriceApplied ? " (group prices)" : " (ratio \(groupRatio))"
        if let tierAbove { header += ", tier above \(tierAbove) prompt tokens" }
        if failed { header += ", failed request" }
        lines.append(header)
        let nameWidth = components.map(\.name.count).max() ?? 0
        let quantityWidth = components.map(\.quantity.count).max() ?? 0
        for component in components {
            let name = component.name.padding(toLength: nameWidth, withPad: " ", startingAt: 0)
            let quantity = String(repeating: " ", count: quantityWidth - component.quantity.count) + component.quantity
            lines.append(
                "  \(name)  \(quantity) × \(component.unitPriceUSD) USD per \(component.per) = \(component.amountUnits) units"
            )
        }
        lines.append("total \(units) units = \(usd) USD" + (capped ? " (capped at Int64.max)" : ""))
        return lines.joined(separator: "\n")
    }
}

/// Prices one request with a sheet — the single rating function behind quote, authorize and
/// ingest. Rules (with worked examples in `docs/pricing.md`):
///
/// - Prices are the model's base prices; if `prompt_tokens` exceeds a tier's threshold, the
///   highest such tier's prices replace the ones it names; if the model has `group_prices` for
///   the group, those replace the ones they name and no ratio applies; otherwise the sum is
///   multiplied by the group ratio.
/// - Tokens: `prompt_tokens` includes cached, cache-write and audio input tokens, each billed
///   at its own price (else `input`), the rest at `input`; `completion_tokens` includes audio
///   output tokens (at `audio_output`, else `output`), the rest at `output`. Per 1M tokens.
/// - Images: `per_image[size/quality]`, else `[size]`, else `[default]`, × images. Video:
///   `per_video_second[resolution]`, else `[default]`, × seconds. `per_call` × calls (0 calls
///   count as 1 when `per_call` is the model's only price). `per_compute_second` ×
///   `predict_time`. A missing key throws ``RatingError/sizeNotSupported(size:quality:)`` (an image's) or
///   ``RatingError/resolutionNotSupported(_:)`` (a video's).
/// - `failed`: only `charge_failed` (× ratio) is charged, else 0.
/// - Exact integer arithmetic; rounded half up once per request; ≥ 1 unit when any priced
///   quantity is non-zero with a non-zero price; capped at `Int64.max` (``Rating/capped``).
///   Negative quantities count as 0.
///
/// With `breakdown: false` (the default, for ingest and authorize) no component text is built
/// and nothing is allocated; `breakdown: true` fills ``Rating/components``.
public func rate(
    _ usage: Usage, model: String, group: String, failed: Bool = false, sheet: PriceSheet,
    breakdown: Bool = false
) throws(RatingError) -> Rating {
    guard let modelPrice = sheet.models[model] else { throw .unknownModel(model) }
    guard let groupSpec = sheet.groups[group] else { throw .unknownGroup(group) }
    guard groupSpec.allows(model) else { throw .modelNotInGroup(model: model, group: group) }

    var prices = modelPrice.prices
    let tier = modelPrice.tiers.isEmpty ? nil : modelPrice.tier(promptTokens: usage.promptTokens)
    if let tier { prices.tokens = prices.tokens.overridden(by: tier.prices) }
    let groupOverride = modelPrice.groupPrices.isEmpty ? nil : modelPrice.groupPrices[group]
    if let groupOverride { prices = prices.overridden(by: groupOverride) }
    let ratio = groupOverride == nil ? groupSpec.ratio : .one

    var sum = RatingSum(ratioE12: ratio.magnitudeE12, breakdown: breakdown)
    if failed {
        if let price = prices.chargeFailed {
            sum.addCount(1, price: price, name: "charge_failed", per: "failed request")
        }
    } else {
        try addUsage(usage, prices: prices, to: &sum)
    }
    let (units, capped) = sum.roundedUnits()
    return Rating(
        units: units, capped: capped, groupRatio: ratio, groupPriceApplied: groupOverride != nil,
        tierAbove: tier?.abovePromptTokens, failed: failed, components: sum.components)
}

private func addUsage(_ usage: Usage, prices: PriceFields, to sum: inout RatingSum) throws(RatingError) {
    @inline(__always) func nonNegative(_ value: Int64) -> Int64 { value > 0 ? value : 0 }
    let tokens = prices.tokens
    let prompt = nonNegative(usage.promptTokens)
    let cached = nonNegative(usage.cachedTokens)
    let cacheWrite = nonNegative(usage.cacheWriteTokens)
    let audioInput = nonNegative(usage.audioInputTokens)
    let completion = nonNegative(usage.completionTokens)
    let audioOutput = nonNegative(usage.audioOutputTokens)

    let restInput = Int64(max(0, Int128(prompt) - Int128(cached) - Int128(cacheWrite) - Int128(audioInput)))
    let restOutput = max(0, completion - audioOutput)
    if let input = tokens.input { sum.addTokens(restInput, price: input, name: "input") }
    if let price = tokens.cachedInput ?? tokens.input { sum.addTokens(cached, price: price, name: "cached_input") }
    if let price = tokens.cacheWrite ?? tokens.input { sum.addTokens(cacheWrite, price: price, name: "cache_write") }
    if let price = tokens.audioInput ?? tokens.input { sum.addTokens(audioInput, price: price, name: "audio_input") }
    if let output = tokens.output { sum.addTokens(restOutput, price: output, name: "output") }
    if let price = tokens.audioOutput ?? tokens.output {
        sum.addTokens(audioOutput, price: price, name: "audio_output")
    }

    let images = nonNegative(usage.images)
    if images > 0, let table = prices.perImage {
        let size = usage.size?.isEmpty == false ? usage.size : nil
        let quality = usage.quality?.isEmpty == false ? usage.quality : nil
        var key: String?
        var price: ExactDecimal?
        if let size, let quality {
            let combined = size + "/" + quality
            if let found = table[combined] { (key, price) = (combined, found) }
        }
        if price == nil, let size, let found = table[size] { (key, price) = (size, found) }
        if price == nil, let found = table["default"] { (key, price) = ("default", found) }
        guard let price else { throw .sizeNotSupported(size: size, quality: quality) }
        sum.addCount(images, price: price, name: sum.breakdown ? "image \(key ?? "")" : "", per: "image")
    }

    if usage.videoSeconds > .zero, let table = prices.perVideoSecond {
        let resolution = usage.resolution?.isEmpty == false ? usage.resolution : nil
        var key: String?
        var price: ExactDecimal?
        if let resolution, let found = table[resolution] { (key, price) = (resolution, found) }
        if price == nil, let found = table["default"] { (key, price) = ("default", found) }
        guard let price else { throw .resolutionNotSupported(resolution) }
        sum.addDecimal(usage.videoSeconds, price: price, name: sum.breakdown ? "video \(key ?? "")" : "", per: "second")
    }

    if let perCall = prices.perCall {
        var calls = nonNegative(usage.calls)
        if calls == 0, prices.isPerCallOnly { calls = 1 }
        sum.addCount(calls, price: perCall, name: "call", per: "call")
    }

    if let perSecond = prices.perComputeSecond, usage.predictTime > .zero {
        sum.addDecimal(usage.predictTime, price: perSecond, name: "compute", per: "second")
    }
}

/// The exact running sum of one request, in units × 10^25, kept in 256 bits.
///
/// Token component: price·10^12 × tokens × 5·10^12 (= USD/1M × tokens × 500000 / 10^6 × 10^25).
/// Count component: price·10^12 × count × 5·10^18. Decimal component: price·10^12 ×
/// quantity·10^12 × 5·10^6. The total is multiplied by ratio·10^12 and divided by 10^37.
/// Every overflow of 256 bits means a cost above 10^40 units, far past `Int64.max`.
struct RatingSum {
    var total = UInt256.zero
    var overflow = false
    let ratioE12: UInt128
    let breakdown: Bool
    var components: [RatingComponent] = []

    static let tokenFactor: UInt128 = 5_000_000_000_000  // 5·10^12
    static let countFactor: UInt128 = 5_000_000_000_000_000_000  // 5·10^18
    static let decimalFactor: UInt128 = 5_000_000  // 5·10^6
    static let divisor: UInt128 = Pow10.of(37)

    init(ratioE12: UInt128, breakdown: Bool) {
        self.ratioE12 = ratioE12
        self.breakdown = breakdown
    }

    mutating func add(
        _ base: UInt256, factor: UInt128, name: String, quantity: @autoclosure () -> String,
        per: String, price: ExactDecimal
    ) {
        let term = base.multiplied(by: factor)
        if let term, let newTotal = total.adding(term) { total = newTotal } else { overflow = true }
        if breakdown {
            let amount = term.flatMap { $0.multiplied(by: ratioE12) }.map { $0.decimalText(scale: 37) } ?? "overflow"
            components.append(
                RatingComponent(
                    name: name, quantity: quantity(), per: per,
                    unitPriceUSD: price.description, amountUnits: amount))
        }
    }

    mutating func addTokens(_ count: Int64, price: ExactDecimal, name: String) {
        guard count > 0 else { return }
        add(
            UInt256.product(price.magnitudeE12, UInt128(count)), factor: Self.tokenFactor, name: name,
            quantity: String(count), per: "1M tokens", price: price)
    }

    mutating func addCount(_ count: Int64, price: ExactDecimal, name: String, per: String) {
        guard count > 0 else { return }
        add(
            UInt256.product(price.magnitudeE12, UInt128(count)), factor: Self.countFactor, name: name,
            quantity: String(count), per: per, price: price)
    }

    mutating func addDecimal(_ quantity: ExactDecimal, price: ExactDecimal, name: String, per: String) {
        guard quantity > .zero else { return }
        add(
            UInt256.product(price.magnitudeE12, quantity.magnitudeE12), factor: Self.decimalFactor, name: name,
            quantity: quantity.description, per: per, price: price)
    }

    /// Units rounded half up, ≥ 1 when the exact sum is positive, capped at `Int64.max`.
    func roundedUnits() -> (units: Int64, capped: Bool) {
        if overflow { return (Int64.max, true) }
        if total.isZero { return (0, false) }
        guard let scaled = total.multiplied(by: ratioE12) else { return (Int64.max, true) }
        let (quotient, remainder) = scaled.quotientAndRemainder(dividingBy: Self.divisor)
        guard quotient.high == 0, quotient.low <= UInt128(Int64.max) else { return (Int64.max, true) }
        var units = quotient.low
        if remainder >= Self.divisor - remainder { units += 1 }  // 2r ≥ d: half up
        if units > UInt128(Int64.max) { return (Int64.max, true) }
        return (Int64(max(units, 1)), false)
    }
}
