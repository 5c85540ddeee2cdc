/// Quota units and their USD text (DESIGN §2). 500,000 units = 1 USD, so 1 unit = 0.000002 USD.
///
/// Balances, holds and charges are `Int64` units; nothing on the money path uses `Double`,
/// `Float` or Foundation's `Decimal`.
public enum Money {
    /// Quota units per US dollar (new-api's `QuotaPerUnit`).
    public static let unitsPerUSD: Int64 = 500_000

    /// USD text with exactly 6 decimals: 3750 → `"0.007500"`, -1 → `"-0.000002"`,
    /// 500000 → `"1.000000"`. Exact for every `Int64`.
    public static func formatUSD(units: Int64) -> String {
        // 1 unit = 2 micro-USD.
        let micros = Int128(units) * 2
        let magnitude = micros.magnitude
        let whole = magnitude / 1_000_000
        let fraction = String(magnitude % 1_000_000)
        let padded = String(repeating: "0", count: 6 - fraction.count) + fraction
        return (micros < 0 ? "-" : "") + String(whole) + "." + padded
    }

    /// `formatUSD` with a dollar sign after the minus: 3750 → `"$0.007500"`, -1 → `"-$0.000002"`.
    public static func formatDollars(units: Int64) -> String {
        let usd = formatUSD(units: units)
        return usd.hasPrefix("-") ? "-$" + usd.dropFirst() : "$" + usd
    }

    /// Parses a USD amount (`"1.5"`, `"-0.25"`, `"20"`) into units. The amount must be a whole
    /// number of units (a multiple of 0.000002 USD) and fit in `Int64`; otherwise this throws.
    public static func parseUSDToUnits(_ text: String) throws(DecimalParseError) -> Int64 {
        let value = try ExactDecimal(text)
        // units = value × 500000 = valueE12 × 5 / 10^7
        let scaled = value.valueE12 * 5
        let (units, remainder) = scaled.quotientAndRemainder(dividingBy: 10_000_000)
        guard remainder == 0 else {
            throw DecimalParseError(input: text, reason: "not a whole number of quota units (1 unit = 0.000002 USD)")
        }
        guard let result = Int64(exactly: units) else {
            throw DecimalParseError(input: text, reason: "too large for a quota amount")
        }
        return result
    }

    /// The exact USD value of `units` as a decimal (at most 6 fractional digits).
    public static func usd(units: Int64) -> ExactDecimal {
        ExactDecimal(mantissa: Int128(units) * 2, scale: 6) ?? .zero
    }
}
