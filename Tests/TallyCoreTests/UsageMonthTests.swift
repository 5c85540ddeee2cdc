import Foundation
import TallyCore
import Testing

@Suite("UsageMonth")
struct UsageMonthTests {
    @Test("YYYY-MM parses", arguments: [("2026-09", 2026, 9), ("1970-01", 1970, 1), ("9999-12", 9999, 12)])
    func parses(text: String, year: Int, month: Int) throws {
        let parsed = try UsageMonth.parse(text, field: "month")
        #expect(parsed.year == year && parsed.month == month)
        #expect(parsed.description == text)
        #expect(UsageMonth(text) == parsed)
    }

    @Test(
        "anything else is refused with the one message, naming the field",
        arguments: [
            "2026-9", "2026-0901", "2026-13", "2026-00", "1969-12", "26-09", "2026/09", "2026-09-01", "２０２６-09",
            "+026-09",
            "", "2026-0x",
        ])
    func refuses(text: String) {
        #expect(throws: RuleViolation("--month must be YYYY-MM, got \"\(text)\"")) {
            try UsageMonth.parse(text, field: "--month")
        }
        #expect(UsageMonth(text) == nil)
    }

    @Test("the message quotes at most 40 characters of what was given")
    func longInput() {
        let text = String(repeating: "9", count: 100)
        #expect(throws: RuleViolation("month must be YYYY-MM, got \"\(text.prefix(40))\"")) {
            try UsageMonth.parse(text, field: "month")
        }
    }

    @Test("months add across years, and order by time")
    func arithmetic() throws {
        let december = try #require(UsageMonth("2026-12"))
        #expect(december.adding(months: 1).description == "2027-01")
        #expect(december.adding(months: -12).description == "2025-12")
        #expect(december.adding(months: -23).description == "2025-01")
        #expect(december < december.adding(months: 1))
        #expect(december.firstDay == "2026-12-01")
        #expect(UsageMonth(containing: december.start) == december)
        #expect(UsageMonth(containing: december.adding(months: 1).start.addingTimeInterval(-1)) == december)
    }

    @Test("the month of an instant is the UTC calendar's, on both sides of every month's first instant")
    func containingMatchesCalendar() throws {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = try #require(TimeZone(identifier: "UTC"))
        var month = try #require(UsageMonth("1970-01"))
        while month.year < 2101 {
            for instant in [
                month.start, month.start.addingTimeInterval(-0.000_001), month.start.addingTimeInterval(1e6),
            ] {
                let parts = calendar.dateComponents([.year, .month], from: instant)
                let found = UsageMonth(containing: instant)
                #expect(found.year == parts.year && found.month == parts.month, "\(instant)")
            }
            month = month.adding(months: 1)
        }
    }
}
