/// An exact decimal number: `mantissa / 10^scale`, used for USD prices, group ratios and
/// fractional usage quantities (video seconds, Replicate `predict_time`).
///
/// Limits: at most ``maxFractionDigits`` (12) digits after the point and at most
/// ``maxIntegerDigits`` (18) before it, so every value rescaled to 12 fractional digits fits in
/// 30 decimal digits. Values are kept normalized (no trailing fractional zeros, no negative
/// zero), so `"2.50"` and `"2.5"` are equal and both print as `"2.5"`.
///
/// Text syntax (``init(_:)``): an optional `-`, one or more digits, optionally `.` and one or more
/// digits — `"2.50"`, `"0.001"`, `"-1"`, `"007"`. Rejected: empty text, spaces, `+`, `"2."`,
/// `".5"`, thousands separators, `NaN`, and exponent notation (`"1e-3"`) — prices are written
/// plainly. JSON numbers in usage objects may carry an exponent: see ``init(json:)``.
public struct ExactDecimal: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Most digits allowed after the decimal point.
    public static let maxFractionDigits = 12
    /// Most digits allowed before the decimal point.
    public static let maxIntegerDigits = 18

    /// The signed digits of the value; `value = mantissa / 10^scale`.
    public let mantissa: Int128
    /// Number of fractional digits, 0…12; normalized so that `mantissa` is not a multiple of 10
    /// when `scale > 0`.
    public let scale: Int

    /// Zero.
    public static let zero = ExactDecimal(normalizedMantissa: 0, scale: 0)
    /// One.
    public static let one = ExactDecimal(normalizedMantissa: 1, scale: 0)

    init(normalizedMantissa: Int128, scale: Int) {
        self.mantissa = normalizedMantissa
        self.scale = scale
    }

    /// `mantissa / 10^scale`, normalized; nil when the value exceeds the limits.
    public init?(mantissa: Int128, scale: Int) {
        guard scale >= 0, scale <= 38 else { return nil }
        var mantissa = mantissa
        var scale = scale
        while scale > 0, mantissa % 10 == 0 {
            mantissa /= 10
            scale -= 1
        }
        guard scale <= Self.maxFractionDigits else { return nil }
        let magnitude = mantissa.magnitude
        guard magnitude / Pow10.of(scale) < Pow10.of(Self.maxIntegerDigits) else { return nil }
        self.init(normalizedMantissa: mantissa, scale: scale)
    }

    /// An integer value.
    public init(_ integer: Int64) {
        self.init(normalizedMantissa: Int128(integer), scale: 0)
    }

    /// Parses plain decimal text (`"2.50"`, `"-1"`, `"0.000001"`); exponents are rejected.
    public init(_ text: some StringProtocol) throws(DecimalParseError) {
        var copy = String(text)
        let result = copy.withUTF8 { DecimalScanner.parse($0, allowExponent: false) }
        switch result {
        case .success(let value): self = value
        case .failure(let reason): throw DecimalParseError(input: String(text), reason: reason.text)
        }
    }

    /// Parses the text of a JSON number exactly, exponent allowed (`8`, `8.5`, `0.25`, `1e-3`,
    /// `2.5E+1`), within the same limits as ``init(_:)``.
    public init(json text: some StringProtocol) throws(DecimalParseError) {
        var copy = String(text)
        let result = copy.withUTF8 { DecimalScanner.parse($0, allowExponent: true) }
        switch result {
        case .success(let value): self = value
        case .failure(let reason): throw DecimalParseError(input: String(text), reason: reason.text)
        }
    }

    /// Parses the UTF-8 bytes of a JSON number exactly (exponent allowed). For fast decoders.
    public init(jsonUTF8 bytes: UnsafeBufferPointer<UInt8>) throws(DecimalParseError) {
        switch DecimalScanner.parse(bytes, allowExponent: true) {
        case .success(let value): self = value
        case .failure(let reason):
            throw DecimalParseError(input: String(decoding: bytes, as: UTF8.self), reason: reason.text)
        }
    }

    /// The decimal with at most 6 fractional digits that a binary64 value read from JSON stands
    /// for, or nil when there is none.
    ///
    /// This is exact for every decimal text with at most 6 fractional digits and magnitude below
    /// 2^50 / 10^6 (about 1.1 × 10^9): with `N` the text times 10^6 (|N| ≤ 2^50), the parsed
    /// double `d` is within |N|·2^-53 / 10^6 of `N / 10^6`, so `d × 10^6` (one more rounding) is
    /// within 2 · 2^50 · 2^-53 < 0.5 of `N` and rounds back to `N`; the check
    /// `Double(N) / 10^6 == d` (one correctly rounded division of exact operands) then holds, and
    /// distinct such decimals map to distinct doubles (their spacing 10^-6 exceeds the largest
    /// ulp there, 2^-22). A number with more fractional digits is rejected unless it is within
    /// half an ulp of a 6-digit decimal — that is, unless JSON text and the 6-digit decimal are
    /// the same double.
    public init?(exactly value: Double) {
        guard value.isFinite, value.magnitude < 1_125_899_906.842624 else { return nil }
        let scaled = (value * 1_000_000).rounded(.toNearestOrEven)
        guard scaled / 1_000_000 == value else { return nil }
        self.init(mantissa: Int128(Int64(scaled)), scale: 6)
    }

    /// True for zero.
    public var isZero: Bool { mantissa == 0 }
    /// True for values below zero.
    public var isNegative: Bool { mantissa < 0 }

    /// The value times 10^12 as a magnitude (always exact: fits in 30 digits).
    var magnitudeE12: UInt128 { mantissa.magnitude * Pow10.of(Self.maxFractionDigits - scale) }

    /// The value times 10^12, signed.
    var valueE12: Int128 { mantissa * Int128(Pow10.of(Self.maxFractionDigits - scale)) }

    /// The shortest exact text: `"2.5"`, `"-0.000002"`, `"10"`.
    public var description: String {
        // Most usage measures are zero (the video seconds and predict time of every chat line),
        // and their text is written for each stored line and pending usage row.
        guard mantissa != 0 else { return "0" }
        return DecimalText.place(digits: String(mantissa.magnitude), scale: scale, negative: mantissa < 0)
    }

    /// The text with at least `minFractionDigits` fractional digits (`"2.50"` for 2.5 and 2).
    public func formatted(minFractionDigits: Int) -> String {
        let text = description
        let fraction = scale
        guard fraction < minFractionDigits else { return text }
        return text + (fraction == 0 ? "." : "") + String(repeating: "0", count: minFractionDigits - fraction)
    }

    public static func < (lhs: ExactDecimal, rhs: ExactDecimal) -> Bool {
        lhs.valueE12 < rhs.valueE12
    }

    /// The exact sum; nil when it exceeds ``maxIntegerDigits`` digits before the point.
    public func adding(_ other: ExactDecimal) -> ExactDecimal? {
        let (sum, overflow) = valueE12.addingReportingOverflow(other.valueE12)
        return overflow ? nil : ExactDecimal(mantissa: sum, scale: Self.maxFractionDigits)
    }
}

extension ExactDecimal: Codable {
    /// Decodes from a JSON string (`"2.50"`) or, exactly, from an integer.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let integer = try? container.decode(Int64.self) {
            self.init(integer)
            return
        }
        let text = try container.decode(String.self)
        do {
            try self.init(text)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    /// Encodes as a JSON string, e.g. `"2.5"`.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Why a text is not an ``ExactDecimal``.
public struct DecimalParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The rejected text.
    public let input: String
    /// What is wrong with it, e.g. `more than 12 fractional digits`.
    public let reason: String

    /// Creates an error.
    public init(input: String, reason: String) {
        self.input = input
        self.reason = reason
    }

    /// `invalid decimal "1e-3": exponent notation is not supported`.
    public var description: String { "invalid decimal \(PriceText.quoted(input)): \(reason)" }
}

/// Short text helpers shared by the money and pricing code.
enum PriceText {
    /// `"text"` with `"` and `\` and control characters escaped; long texts are cut at 60.
    static func quoted(_ text: String) -> String {
        var output = "\""
        for (count, scalar) in text.unicodeScalars.enumerated() {
            if count == 60 {
                output += "…"
                break
            }
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\t": output += "\\t"
            case _ where scalar.value < 0x20: output += "\\u{\(String(scalar.value, radix: 16))}"
            default: output.unicodeScalars.append(scalar)
            }
        }
        return output + "\""
    }
}

/// The byte-level decimal parser behind every `ExactDecimal` initializer (no allocation).
enum DecimalScanner {
    static func parse(_ bytes: UnsafeBufferPointer<UInt8>, allowExponent: Bool)
        -> Result<ExactDecimal, ReasonText>
    {
        let count = bytes.count
        guard count > 0 else { return .failure("empty") }
        var index = 0
        var negative = false
        if bytes[0] == UInt8(ascii: "-") {
            negative = true
            index = 1
        } else if bytes[0] == UInt8(ascii: "+") {
            return .failure("a leading \"+\" is not allowed")
        }
        let integerStart = index
        while index < count, isDigit(bytes[index]) { index += 1 }
        let integerEnd = index
        guard integerEnd > integerStart else {
            return .failure(
                index < count && bytes[index] == UInt8(ascii: ".")
                    ? "a digit is required before the point" : "not a number")
        }
        var fractionStart = index
        var fractionEnd = index
        if index < count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            fractionStart = index
            while index < count, isDigit(bytes[index]) { index += 1 }
            fractionEnd = index
            guard fractionEnd > fractionStart else { return .failure("a digit is required after the point") }
        }
        var exponent = 0
        if index < count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            guard allowExponent else { return .failure("exponent notation is not supported") }
            index += 1
            var exponentNegative = false
            if index < count, bytes[index] == UInt8(ascii: "-") || bytes[index] == UInt8(ascii: "+") {
                exponentNegative = bytes[index] == UInt8(ascii: "-")
                index += 1
            }
            let exponentStart = index
            while index < count, isDigit(bytes[index]) {
                if exponent < 10_000 { exponent = exponent * 10 + Int(bytes[index] &- 48) }
                index += 1
            }
            guard index > exponentStart else { return .failure("a digit is required in the exponent") }
            if exponentNegative { exponent = -exponent }
        }
        guard index == count else {
            let scalar = String(
                decoding: UnsafeBufferPointer(rebasing: bytes[index..<Swift.min(index + 1, count)]),
                as: UTF8.self)
            return .failure("unexpected character \(PriceText.quoted(scalar))")
        }

        // The digits are int ++ fraction; value = digits / 10^(fractionLength - exponent).
        let integerLength = integerEnd - integerStart
        let totalLength = integerLength + (fractionEnd - fractionStart)
        @inline(__always) func digit(_ position: Int) -> UInt8 {
            position < integerLength
                ? bytes[integerStart + position] &- 48
                : bytes[fractionStart + position - integerLength] &- 48
        }
        var first = 0
        while first < totalLength, digit(first) == 0 { first += 1 }
        if first == totalLength { return .success(.zero) }
        var last = totalLength - 1
        while digit(last) == 0 { last -= 1 }
        let trailingZeros = totalLength - 1 - last
        var scale = (fractionEnd - fractionStart) - exponent - trailingZeros
        let significant = last - first + 1
        if scale > ExactDecimal.maxFractionDigits {
            return .failure("more than \(ExactDecimal.maxFractionDigits) fractional digits")
        }
        let integerDigits = significant - scale
        if integerDigits > ExactDecimal.maxIntegerDigits {
            return .failure("too large (more than \(ExactDecimal.maxIntegerDigits) digits before the point)")
        }
        var mantissa: Int128 = 0
        for position in first...last { mantissa = mantissa * 10 + Int128(digit(position)) }
        if scale < 0 {
            mantissa *= Int128(Pow10.of(-scale))
            scale = 0
        }
        return .success(ExactDecimal(normalizedMantissa: negative ? -mantissa : mantissa, scale: scale))
    }

    @inline(__always)
    static func isDigit(_ byte: UInt8) -> Bool { byte >= 48 && byte <= 57 }
}

/// A reason text usable as a `Result` failure.
struct ReasonText: Error, ExpressibleByStringInterpolation, CustomStringConvertible {
    let text: String
    init(stringLiteral value: String) { text = value }
    init(stringInterpolation: DefaultStringInterpolation) { text = String(stringInterpolation: stringInterpolation) }
    init(_ text: String) { self.text = text }
    var description: String { text }
}
