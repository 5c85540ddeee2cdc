import Foundation

/// A UTC calendar day as a day number (days since 1970-01-01), with the civil-date arithmetic
/// done in integers: rollups and ledger months are keyed per line, and `Calendar` costs
/// microseconds a call.
public struct UTCDay: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// Days since 1970-01-01 (negative before).
    public let number: Int

    public init(number: Int) { self.number = number }

    /// The UTC day of an instant.
    public init(_ date: Date) {
        number = Int((date.timeIntervalSince1970 / 86_400).rounded(.down))
    }

    /// Year, month (1…12) and day (1…31).
    public var civil: (year: Int, month: Int, day: Int) { RFC3339Time.civilFromDays(number) }

    /// The first day of this day's month.
    public var monthStart: UTCDay { UTCDay(number: number - civil.day + 1) }

    /// `YYYY-MM-DD`, as PostgreSQL reads a `date` (written per pending row of every batch, so
    /// without `String(format:)`, which costs microseconds a call).
    public var description: String {
        let (year, month, day) = civil
        guard (0...9_999).contains(year) else {
            return Self.padded(year, to: 4) + "-" + Self.padded(month, to: 2) + "-" + Self.padded(day, to: 2)
        }
        // Ten bytes written in place instead of five joined strings: every pending usage row
        // and ledger charge of a batch writes its day or month.
        return String(unsafeUninitializedCapacity: 10) { text in
            var rest = year
            for index in (0..<4).reversed() {
                text[index] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            }
            text[4] = UInt8(ascii: "-")
            text[5] = UInt8(ascii: "0") + UInt8(month / 10)
            text[6] = UInt8(ascii: "0") + UInt8(month % 10)
            text[7] = UInt8(ascii: "-")
            text[8] = UInt8(ascii: "0") + UInt8(day / 10)
            text[9] = UInt8(ascii: "0") + UInt8(day % 10)
            return 10
        }
    }

    /// The first instant of this day.
    public var start: Date { Date(timeIntervalSince1970: Double(number) * 86_400) }

    private static func padded(_ value: Int, to width: Int) -> String {
        let digits = String(value)
        return digits.count < width ? String(repeating: "0", count: width - digits.count) + digits : digits
    }

    public static func < (lhs: UTCDay, rhs: UTCDay) -> Bool { lhs.number < rhs.number }
}
