import Foundation
import TallyCore
import Testing

@Suite("UTC days")
struct UTCDayTests {
    @Test("civil dates and month starts agree with Foundation's Gregorian calendar from 1900 to 2200")
    func agreesWithCalendar() throws {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = try #require(TimeZone(identifier: "UTC"))
        for number in stride(from: -25_567, through: 84_000, by: 3) {
            let day = UTCDay(number: number)
            let date = Date(timeIntervalSince1970: Double(number) * 86_400 + 43_210.5)
            let parts = calendar.dateComponents([.year, .month, .day], from: date)
            let civil = day.civil, monthStart = day.monthStart.civil
            let expected: [Int] = [parts.year!, parts.month!, parts.day!]
            #expect([civil.year, civil.month, civil.day] == expected, "day \(number)")
            #expect(UTCDay(date) == day)
            let firstOfMonth: [Int] = [expected[0], expected[1], 1]
            #expect([monthStart.year, monthStart.month, monthStart.day] == firstOfMonth)
            #expect(day.description == String(format: "%04d-%02d-%02d", expected[0], expected[1], expected[2]))
        }
        // Years of fewer and of more than four digits (the second outside the fast path).
        for number in [-700_000, -719_162, 2_932_897, 3_000_000] {
            let civil = UTCDay(number: number).civil
            #expect(
                UTCDay(number: number).description
                    == String(format: "%04d-%02d-%02d", civil.year, civil.month, civil.day))
        }
        #expect(UTCDay(number: 0).description == "1970-01-01")
        #expect(UTCDay(Date(timeIntervalSince1970: -0.5)).description == "1969-12-31")
        #expect(UTCDay(number: 20_759).description == "2026-11-02")
    }
}
