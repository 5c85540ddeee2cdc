import Foundation

/// A calendar month in UTC, the period of exports, statements, partitions and retention.
public struct UsageMonth: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let year: Int
    /// 1…12.
    public let month: Int

    public init?(year: Int, month: Int) {
        guard (1970...9999).contains(year), (1...12).contains(month) else { return nil }
        self.year = year
        self.month = month
    }

    /// Parses `YYYY-MM` (exactly: four digits, a dash, two digits), given as `field`. Every
    /// caller, HTTP and CLI, answers a bad month with this one message.
    public static func parse(_ text: String, field: String) throws(RuleViolation) -> UsageMonth {
        let bytes = Array(text.utf8)
        guard bytes.count == 7, bytes[4] == UInt8(ascii: "-"),
            bytes.indices.allSatisfy({ $0 == 4 || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[$0]) }),
            let year = Int(text.prefix(4)), let month = Int(text.suffix(2)),
            let parsed = UsageMonth(year: year, month: month)
        else { throw RuleViolation("\(field) must be YYYY-MM, got \"\(text.prefix(40))\"") }
        return parsed
    }

    /// `parse` for text known to be a month (tests, stored partition names); nil otherwise.
    public init?(_ text: String) {
        guard let month = try? Self.parse(text, field: "month") else { return nil }
        self = month
    }

    /// The UTC month containing `date`. In integers (``UTCDay``): every ingested line asks, and
    /// `Calendar` costs microseconds a call.
    public init(containing date: Date) {
        let civil = UTCDay(date).civil
        year = civil.year
        month = civil.month
    }

    /// `2026-10`.
    public var description: String { String(format: "%04d-%02d", year, month) }

    /// The first day as an ISO date, `2026-10-01`.
    public var firstDay: String { description + "-01" }

    /// The first instant of the month.
    public var start: Date {
        Self.calendar.date(from: DateComponents(year: year, month: month, day: 1))!
    }

    /// The month `count` months later (earlier when negative).
    public func adding(months count: Int) -> UsageMonth {
        let index = year * 12 + (month - 1) + count
        return UsageMonth(uncheckedYear: index / 12, month: index % 12 + 1)
    }

    public static func < (lhs: UsageMonth, rhs: UsageMonth) -> Bool {
        (lhs.year, lhs.month) < (rhs.year, rhs.month)
    }

    private init(uncheckedYear year: Int, month: Int) {
        self.year = year
        self.month = month
    }

    private static let calendar: Calendar = {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        return calendar
    }()
}
