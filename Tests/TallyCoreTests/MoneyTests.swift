import Foundation
import Testing

@testable import TallyCore

@Suite("Money")
struct MoneyTests {
    @Test(
        "formatUSD prints exactly 6 decimals",
        arguments: [
            (Int64(3750), "0.007500"), (0, "0.000000"), (1, "0.000002"), (-1, "-0.000002"),
            (500_000, "1.000000"), (250_000, "0.500000"), (2_000_000, "4.000000"), (-750_001, "-1.500002"),
            (Int64.max, "18446744073709.551614"), (Int64.min, "-18446744073709.551616"),
        ])
    func formatUSD(units: Int64, text: String) {
        #expect(Money.formatUSD(units: units) == text)
    }

    @Test(
        "formatDollars puts the sign before the dollar",
        arguments: [
            (Int64(3750), "$0.007500"), (0, "$0.000000"), (-1, "-$0.000002"), (-750_001, "-$1.500002"),
            (Int64.min, "-$18446744073709.551616"),
        ])
    func formatDollars(units: Int64, text: String) {
        #expect(Money.formatDollars(units: units) == text)
    }

    @Test func unitsPerUSD() {
        #expect(Money.unitsPerUSD == 500_000)
    }

    @Test(
        "parseUSDToUnits accepts whole numbers of units",
        arguments: [
            ("1", Int64(500_000)), ("0.000002", 1), ("1.5", 750_000), ("-0.25", -125_000), ("20", 10_000_000),
            ("0", 0), ("18446744073709.551614", Int64.max),
        ])
    func parseUSD(text: String, units: Int64) throws {
        #expect(try Money.parseUSDToUnits(text) == units)
    }

    @Test func parseUSDRejectsFractionsOfAUnit() {
        #expect(
            throws: DecimalParseError(
                input: "0.000001",
                reason: "not a whole number of quota units (1 unit = 0.000002 USD)")
        ) {
            try Money.parseUSDToUnits("0.000001")
        }
        #expect(throws: DecimalParseError(input: "18446744073709.551616", reason: "too large for a quota amount")) {
            try Money.parseUSDToUnits("18446744073709.551616")
        }
        #expect(throws: DecimalParseError(input: "abc", reason: "not a number")) { try Money.parseUSDToUnits("abc") }
    }

    @Test func usdOfUnits() {
        #expect(Money.usd(units: 3750).description == "0.0075")
        #expect(Money.usd(units: -1).description == "-0.000002")
    }
}

@Suite("ExactDecimal")
struct ExactDecimalTests {
    @Test(
        "parses plain decimals and normalizes",
        arguments: [
            ("2.50", "2.5", Int128(25), 1), ("0.001", "0.001", 1, 3), ("-1", "-1", -1, 0), ("007", "7", 7, 0),
            ("10.00", "10", 10, 0), ("-0", "0", 0, 0), ("0.000000000000", "0", 0, 0),
            (
                "999999999999999999.999999999999", "999999999999999999.999999999999",
                999_999_999_999_999_999_999_999_999_999, 12
            ),
            ("2.5000000000000000000", "2.5", 25, 1), ("-0.000002", "-0.000002", -2, 6),
        ])
    func parses(text: String, printed: String, mantissa: Int128, scale: Int) throws {
        let value = try ExactDecimal(text)
        #expect(value.description == printed)
        #expect(value.mantissa == mantissa)
        #expect(value.scale == scale)
    }

    @Test(
        "rejects garbage with a reason",
        arguments: [
            ("", "empty"), ("abc", "not a number"), ("1e-3", "exponent notation is not supported"),
            ("2.", "a digit is required after the point"), (".5", "a digit is required before the point"),
            ("+1", "a leading \"+\" is not allowed"), (" 1", "not a number"), ("1 ", "unexpected character \" \""),
            ("1,000", "unexpected character \",\""), ("NaN", "not a number"), ("--1", "not a number"),
            ("0.0000000000001", "more than 12 fractional digits"),
            ("1000000000000000000", "too large (more than 18 digits before the point)"),
            ("1.2.3", "unexpected character \".\""),
        ])
    func rejects(text: String, reason: String) {
        #expect(throws: DecimalParseError(input: text, reason: reason)) { try ExactDecimal(text) }
    }

    @Test func errorDescription() {
        let error = DecimalParseError(input: "1e-3", reason: "exponent notation is not supported")
        #expect(error.description == #"invalid decimal "1e-3": exponent notation is not supported"#)
    }

    @Test(
        "JSON numbers allow exponents",
        arguments: [
            ("1e-3", "0.001"), ("2.5E+1", "25"), ("8", "8"), ("8.5", "8.5"), ("0.25", "0.25"), ("1500e-3", "1.5"),
            ("1e-12", "0.000000000001"), ("-2e2", "-200"), ("0e5", "0"),
        ])
    func jsonNumbers(text: String, printed: String) throws {
        #expect(try ExactDecimal(json: text).description == printed)
    }

    @Test func jsonExponentLimits() {
        #expect(throws: DecimalParseError(input: "1e-13", reason: "more than 12 fractional digits")) {
            try ExactDecimal(json: "1e-13")
        }
        #expect(throws: DecimalParseError(input: "1e18", reason: "too large (more than 18 digits before the point)")) {
            try ExactDecimal(json: "1e18")
        }
        #expect(throws: DecimalParseError(input: "1e", reason: "a digit is required in the exponent")) {
            try ExactDecimal(json: "1e")
        }
    }

    @Test func equalityAndOrder() throws {
        #expect(try ExactDecimal("2.50") == ExactDecimal("2.5"))
        #expect(try ExactDecimal("0.1") < ExactDecimal("0.11"))
        #expect(try ExactDecimal("-1") < ExactDecimal("0"))
        #expect(try ExactDecimal("999999999999999999") > ExactDecimal("0.000000000001"))
        #expect(ExactDecimal(Int64(42)).description == "42")
        #expect(ExactDecimal(mantissa: 2500, scale: 3)?.description == "2.5")
        #expect(ExactDecimal(mantissa: 1, scale: 13) == nil)
        #expect(try ExactDecimal("2.5").formatted(minFractionDigits: 2) == "2.50")
        #expect(try ExactDecimal("2").formatted(minFractionDigits: 2) == "2.00")
        #expect(try ExactDecimal("0.125").formatted(minFractionDigits: 2) == "0.125")
    }

    @Test(
        "binary64 values with up to 6 fractional digits convert exactly",
        arguments: [
            (8.5, "8.5"), (0.25, "0.25"), (0.1, "0.1"), (0.000001, "0.000001"), (8, "8"),
            (1125899906.842623, "1125899906.842623"),
            (123.456789, "123.456789"), (-3.3, "-3.3"),
        ])
    func exactlyFromDouble(value: Double, printed: String) {
        #expect(ExactDecimal(exactly: value)?.description == printed)
    }

    @Test func exactlyFromDoubleRejects() {
        #expect(ExactDecimal(exactly: 0.1234567) == nil)
        #expect(ExactDecimal(exactly: 1.0 / 3.0) == nil)
        #expect(ExactDecimal(exactly: .nan) == nil)
        #expect(ExactDecimal(exactly: .infinity) == nil)
        #expect(ExactDecimal(exactly: 2e9) == nil)
    }

    /// Every 6-digit decimal in a sample, printed, parsed as a Double and converted back, is
    /// the same decimal (the round trip JSONDecoder relies on).
    @Test func doubleRoundTripSample() throws {
        var generator = SplitMix64(seed: 6)
        for _ in 0..<20_000 {
            let micros = generator.int(0...1_125_899_906_842_623)
            let text = DecimalText.place(digits: String(micros), scale: 6, negative: false)
            let double = try #require(Double(text))
            #expect(ExactDecimal(exactly: double) == (try ExactDecimal(text)), "\(text)")
        }
    }

    @Test func codableAsString() throws {
        let data = try JSONEncoder().encode([try ExactDecimal("2.50")])
        #expect(String(decoding: data, as: UTF8.self) == #"["2.5"]"#)
        let decoded = try JSONDecoder().decode([ExactDecimal].self, from: Data(#"["0.001", 3]"#.utf8))
        #expect(decoded == [try ExactDecimal("0.001"), ExactDecimal(Int64(3))])
        #expect(throws: DecodingError.self) {
            try JSONDecoder().decode([ExactDecimal].self, from: Data(#"["1e-3"]"#.utf8))
        }
    }

    @Test func wideArithmetic() {
        let big = UInt256.product(UInt128.max, UInt128.max)
        #expect(big.high == UInt128.max - 1 && big.low == 1)
        #expect(big.adding(UInt256(high: 1, low: UInt128.max - 1)) == UInt256(high: UInt128.max, low: UInt128.max))
        #expect(UInt256(high: UInt128.max, low: UInt128.max).adding(UInt256(1)) == nil)
        #expect(UInt256(high: 1, low: 0).multiplied(by: UInt128.max) == UInt256(high: UInt128.max, low: 0))
        #expect(UInt256(high: 2, low: 0).multiplied(by: UInt128.max) == nil)
        let (quotient, remainder) = UInt256.product(
            UInt128(10).multipliedReportingOverflow(by: 1).partialValue << 100, 7
        )
        .quotientAndRemainder(dividingBy: 3)
        #expect(remainder == (UInt128(70) << 100) % 3 && quotient == UInt256((UInt128(70) << 100) / 3))
        #expect(UInt256.product(Pow10.of(38), 10).decimalDigits == "1" + String(repeating: "0", count: 39))
        #expect(UInt256(12345).decimalText(scale: 2) == "123.45")
        #expect(UInt256(5).decimalText(scale: 3) == "0.005")
        #expect(UInt256(1200).decimalText(scale: 2) == "12")
        #expect(UInt256.zero.decimalText(scale: 37) == "0")
    }
}
