import Foundation

/// A Swift value sent to PostgreSQL as a text-format parameter.
public protocol PostgresEncodable: Sendable {
    /// The value in PostgreSQL's text input format; `nil` is SQL NULL.
    var postgresText: String? { get }
}

/// A Swift value read from a text-format column.
public protocol PostgresDecodable {
    init(postgresText: String) throws(PostgresError)
}

extension String: PostgresEncodable, PostgresDecodable {
    public var postgresText: String? { self }
    public init(postgresText: String) { self = postgresText }
}

extension Int64: PostgresEncodable, PostgresDecodable {
    public var postgresText: String? { String(self) }
    public init(postgresText: String) throws(PostgresError) {
        guard let value = Int64(postgresText) else { throw .decodeFailure(postgresText, as: "Int64") }
        self = value
    }
}

extension Int: PostgresEncodable, PostgresDecodable {
    public var postgresText: String? { String(self) }
    public init(postgresText: String) throws(PostgresError) {
        guard let value = Int(postgresText) else { throw .decodeFailure(postgresText, as: "Int") }
        self = value
    }
}

extension Int32: PostgresEncodable, PostgresDecodable {
    public var postgresText: String? { String(self) }
    public init(postgresText: String) throws(PostgresError) {
        guard let value = Int32(postgresText) else { throw .decodeFailure(postgresText, as: "Int32") }
        self = value
    }
}

extension Bool: PostgresEncodable, PostgresDecodable {
    public var postgresText: String? { self ? "t" : "f" }
    public init(postgresText: String) throws(PostgresError) {
        switch postgresText {
        case "t", "true": self = true
        case "f", "false": self = false
        default: throw .decodeFailure(postgresText, as: "Bool")
        }
    }
}

extension Date: PostgresEncodable, PostgresDecodable {
    /// Sent as an ISO 8601 UTC timestamp with microseconds (PostgreSQL's precision).
    public var postgresText: String? { PostgresTimestamp.format(self) }
    public init(postgresText: String) throws(PostgresError) {
        guard let date = PostgresTimestamp.parse(postgresText) else {
            throw .decodeFailure(postgresText, as: "Date")
        }
        self = date
    }
}

extension Optional: PostgresEncodable where Wrapped: PostgresEncodable {
    public var postgresText: String? { self.flatMap(\.postgresText) }
}

/// A parameter that is always SQL NULL, for readability at call sites.
public struct SQLNull: PostgresEncodable {
    public init() {}
    public var postgresText: String? { nil }
}

extension PostgresError {
    static func decodeFailure(_ text: String, as type: String) -> PostgresError {
        PostgresError(kind: .decode, message: "cannot decode \(type) from \"\(text.prefix(40))\"")
    }
}

/// Formats and parses `timestamptz` text. The session time zone is pinned to UTC on connect,
/// so the server always answers `2026-11-01 12:00:00.123+00`.
public enum PostgresTimestamp {
    public static func format(_ date: Date) -> String {
        let micros = (date.timeIntervalSince1970 * 1_000_000).rounded()
        let seconds = Int64((micros / 1_000_000).rounded(.down))
        let fraction = Int64(micros) - seconds * 1_000_000
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        return String(
            format: "%04d-%02d-%02d %02d:%02d:%02d.%06lld+00",
            parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
            parts.tm_hour, parts.tm_min, parts.tm_sec, fraction
        )
    }

    /// Parses `YYYY-MM-DD HH:MM:SS[.ffffff]+00` (or with a `T`, or `Z`).
    public static func parse(_ text: String) -> Date? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 19 else { return nil }
        func number(_ from: Int, _ length: Int) -> Int? {
            var value = 0
            for index in from..<(from + length) {
                let byte = bytes[index]
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + Int(byte - 48)
            }
            return value
        }
        guard let year = number(0, 4), let month = number(5, 2), let day = number(8, 2),
              let hour = number(11, 2), let minute = number(14, 2), let second = number(17, 2)
        else { return nil }
        var index = 19
        var micros = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            var digits = 0
            while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57 {
                if digits < 6 { micros = micros * 10 + Int(bytes[index] - 48) }
                digits += 1
                index += 1
            }
            for _ in min(digits, 6)..<6 { micros *= 10 }
        }
        var offsetSeconds = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
            let sign = bytes[index] == UInt8(ascii: "-") ? -1 : 1
            let rest = bytes.count - index - 1
            guard rest >= 2, let hours = number(index + 1, 2) else { return nil }
            var minutes = 0
            if rest >= 5, bytes[index + 3] == UInt8(ascii: ":"), let value = number(index + 4, 2) { minutes = value }
            offsetSeconds = sign * (hours * 3600 + minutes * 60)
        }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds = Int64(days) * 86_400 + Int64(hour * 3600 + minute * 60 + second) - Int64(offsetSeconds)
        return Date(timeIntervalSince1970: Double(seconds) + Double(micros) / 1_000_000)
    }

    /// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}
