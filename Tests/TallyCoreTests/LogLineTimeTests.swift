import Foundation
import TallyCore
import Testing

/// `created_at` of a gateway line: an RFC 3339 string, or Unix time as a JSON number (seconds,
/// fractions allowed, or milliseconds above 1e11), as new-api-style gateways log it.
@Suite("gateway line created_at")
struct LogLineTimeTests {
    /// 2026-11-01T00:00:00Z.
    static let november: TimeInterval = 1_793_491_200

    static func parse(createdAt value: String) throws(IngestRejection) -> LogLine {
        let text = #"{"request_id":"r1","created_at":\#(value),"key":"sk-x","model":"gpt-4o","usage":{}}"#
        let bytes = Array(text.utf8)
        return try bytes.withUnsafeBufferPointer { buffer throws(IngestRejection) in try LogLine.parse(buffer) }
    }

    static func seconds(_ value: String) throws -> TimeInterval {
        try #require(try parse(createdAt: value).createdAt).timeIntervalSince1970
    }

    @Test("integer Unix seconds name the same instant as the RFC 3339 string")
    func integerSeconds() throws {
        #expect(try Self.seconds("1793491200") == Self.november)
        #expect(try Self.seconds(#""2026-11-01T00:00:00Z""#) == Self.november)
        #expect(try Self.seconds("0") == 0)
    }

    @Test("fractions of a second and exponents are kept")
    func fractions() throws {
        #expect(try Self.seconds("1793491200.25") == Self.november + 0.25)
        #expect(abs(try Self.seconds("1793491200.123456") - (Self.november + 0.123456)) < 1e-6)
        #expect(try Self.seconds("1.7934912e9") == Self.november)
    }

    /// Found by a review: a line a fraction of a microsecond before midnight was priced and
    /// booked on one day and stored on the next.
    @Test("created_at is kept to whole microseconds, as PostgreSQL stores it: every reader sees one day")
    func wholeMicroseconds() throws {
        for text in [#""2026-10-31T23:59:59.9999996Z""#, "1793491199.9999996"] {
            let instant = try Self.seconds(text)
            #expect(instant == Self.november, "\(text)")
            #expect(UTCDay(Date(timeIntervalSince1970: instant)).civil.month == 11)
        }
        #expect(try Self.seconds(#""2026-10-31T23:59:59.9999994Z""#) == Self.november - 0.000_001)
    }

    @Test("values above 1e11 are milliseconds; 1e11 itself is seconds")
    func milliseconds() throws {
        #expect(try Self.seconds("1793491200250") == Self.november + 0.25)
        #expect(abs(try Self.seconds("1793491200250.5") - (Self.november + 0.2505)) < 1e-6)
        #expect(try Self.seconds("100000000000") == 100_000_000_000)
        #expect(abs(try Self.seconds("100000000001") - 100_000_000.001) < 1e-6)
    }

    @Test("negative, non-finite and after-9999 times are refused as invalid_json, with the request id")
    func outOfRange() throws {
        for value in ["-1", "-0.5", "1e400", "253402300800000", "99999999999999999999"] {
            #expect(throws: IngestRejection.self, "\(value)") { try Self.parse(createdAt: value) }
            do {
                _ = try Self.parse(createdAt: value)
            } catch {
                #expect(error.code == "invalid_json", "\(value)")
                #expect(error.message.contains("created_at"), "\(value): \(error.message)")
                #expect(error.requestID == "r1")
            }
        }
        // The last millisecond of 9999 is the latest time there is.
        #expect(try Self.seconds("253402300799999") == 253_402_300_799.999)
    }

    @Test("other JSON types are still refused; null and the empty string leave it missing")
    func otherTypes() throws {
        for value in ["true", "[]", "{}", #""1793491200""#, #""yesterday""#] {
            #expect(throws: IngestRejection.self, "\(value)") { try Self.parse(createdAt: value) }
        }
        #expect(try Self.parse(createdAt: "null").createdAt == nil)
        #expect(try Self.parse(createdAt: #""""#).createdAt == nil)
    }
}
