/// Unsigned 256-bit integers, just enough for exact rating arithmetic.
///
/// Rating multiplies a price (up to 30 significant digits), a quantity (up to 31 digits) and a
/// ratio (up to 30 digits); `UInt128` alone cannot hold such products, so the rating engine keeps
/// its sums in 256 bits and treats an overflow of 256 bits as "more than `Int64.max` units"
/// (see `docs/pricing.md`, "Overflow").
struct UInt256: Sendable, Equatable {
    var high: UInt128
    var low: UInt128

    static let zero = UInt256(high: 0, low: 0)

    init(high: UInt128, low: UInt128) {
        self.high = high
        self.low = low
    }

    init(_ value: UInt128) {
        self.high = 0
        self.low = value
    }

    var isZero: Bool { high == 0 && low == 0 }

    /// The full 256-bit product of two 128-bit values (never overflows).
    static func product(_ a: UInt128, _ b: UInt128) -> UInt256 {
        let (high, low) = a.multipliedFullWidth(by: b)
        return UInt256(high: high, low: low)
    }

    /// `self + other`, or nil when the sum does not fit in 256 bits.
    func adding(_ other: UInt256) -> UInt256? {
        let (low, carry) = low.addingReportingOverflow(other.low)
        var (high, overflow1) = high.addingReportingOverflow(other.high)
        var overflow2 = false
        if carry { (high, overflow2) = high.addingReportingOverflow(1) }
        if overflow1 || overflow2 { return nil }
        return UInt256(high: high, low: low)
    }

    /// `self × factor`, or nil when the product does not fit in 256 bits.
    func multiplied(by factor: UInt128) -> UInt256? {
        let lowProduct = low.multipliedFullWidth(by: factor)
        let highProduct = high.multipliedFullWidth(by: factor)
        if highProduct.high != 0 { return nil }
        let (newHigh, overflow) = highProduct.low.addingReportingOverflow(lowProduct.high)
        if overflow { return nil }
        return UInt256(high: newHigh, low: lowProduct.low)
    }

    /// Quotient and remainder of the division by a non-zero 128-bit divisor.
    func quotientAndRemainder(dividingBy divisor: UInt128) -> (quotient: UInt256, remainder: UInt128) {
        precondition(divisor != 0, "division by zero")
        let (quotientHigh, remainderHigh) = high.quotientAndRemainder(dividingBy: divisor)
        let (quotientLow, remainder) = divisor.dividingFullWidth((high: remainderHigh, low: low))
        return (UInt256(high: quotientHigh, low: quotientLow), remainder)
    }

    /// The value as decimal digits (no sign, no leading zeros; "0" for zero).
    var decimalDigits: String {
        if isZero { return "0" }
        var chunks: [UInt128] = []
        var value = self
        let chunkBase: UInt128 = 10_000_000_000_000_000_000  // 10^19
        while !value.isZero {
            let (quotient, remainder) = value.quotientAndRemainder(dividingBy: chunkBase)
            chunks.append(remainder)
            value = quotient
        }
        var text = String(chunks.removeLast())
        for chunk in chunks.reversed() {
            let digits = String(chunk)
            text += String(repeating: "0", count: 19 - digits.count) + digits
        }
        return text
    }

    /// The exact decimal text of `self / 10^scale`, trailing fractional zeros removed.
    func decimalText(scale: Int) -> String {
        DecimalText.place(digits: decimalDigits, scale: scale, negative: false)
    }
}

/// Powers of ten as `UInt128`, 10^0 … 10^38.
enum Pow10 {
    static let table: [UInt128] = {
        var values: [UInt128] = []
        var value: UInt128 = 1
        for _ in 0...38 {
            values.append(value)
            if values.count <= 38 { value = value &* 10 }
        }
        return values
    }()

    @inline(__always)
    static func of(_ exponent: Int) -> UInt128 { table[exponent] }
}

/// Helpers to print exact decimals.
enum DecimalText {
    /// Places a decimal point `scale` digits from the right of `digits` and trims trailing
    /// fractional zeros: ("12345", 2) → "123.45", ("5", 3) → "0.005", ("1200", 2) → "12".
    static func place(digits: String, scale: Int, negative: Bool) -> String {
        var integerPart: Substring
        var fractionPart: Substring
        if scale <= 0 {
            integerPart = Substring(digits + String(repeating: "0", count: -scale))
            fractionPart = ""
        } else if digits.count > scale {
            let split = digits.index(digits.endIndex, offsetBy: -scale)
            integerPart = digits[..<split]
            fractionPart = digits[split...]
        } else {
            integerPart = "0"
            fractionPart = Substring(String(repeating: "0", count: scale - digits.count) + digits)
        }
        while fractionPart.last == "0" { fractionPart = fractionPart.dropLast() }
        if integerPart.isEmpty { integerPart = "0" }
        let isZero = integerPart == "0" && fractionPart.isEmpty
        var text = (negative && !isZero) ? "-" : ""
        text += integerPart
        if !fractionPart.isEmpty { text += "." + fractionPart }
        return text
    }
}
