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

    /// Year, month (1…12) and day (1…31) — Howard Hinnant's `civil_from_days`.
    public var civil: (year: Int, month: Int, day: Int) {
        let z = number + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1_460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let shiftedMonth = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * shiftedMonth + 2) / 5 + 1
        let month = shiftedMonth < 10 ? shiftedMonth + 3 : shiftedMonth - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// The first day of this day's month.
    public var monthStart: UTCDay { UTCDay(number: number - civil.day + 1) }

    /// `YYYY-MM-DD`, as PostgreSQL reads a `date`.
    public var description: String {
        let (year, month, day) = civil
        return String(format: "%04d-%02d-%02d", year, month, day)
    }

    public static func < (lhs: UTCDay, rhs: UTCDay) -> Bool { lhs.number < rhs.number }
}
