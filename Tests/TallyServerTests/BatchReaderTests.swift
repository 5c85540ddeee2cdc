import Foundation
import TallyCore
import TallyServer
import TallyStore
import TallyTestSupport
import Testing

@Suite("batch reader")
struct BatchReaderTests {
    static func feed(_ reader: inout BatchReader, _ text: String) throws {
        try Array(text.utf8).withUnsafeBytes { try reader.feed($0) }
    }

    @Test("a price version stored while a batch streams prices the batch's later lines from then on")
    func versionStoredMidBatch() async throws {
        let db = try await TestDatabase.create("batchreader")
        try await db.prepareBilling(users: 1)
        let services = TallyServices(pool: db.pool)
        try await services.prices.reload()
        var reader = services.ingestor.reader(format: .gateway)
        try Self.feed(&reader, LogLines.chat("before", user: 1, at: "2026-11-10T12:00:00Z") + "\n")
        try await reader.advance()
        // Stored (by this instance, which reloads its book at once) while the body is read,
        // in force from a second after the first line. Before, the batch kept the book it
        // started with, and priced the second line by the old version.
        let newer = try await services.prices.load(
            try PriceSheet.parse(designPriceSheet), effectiveFrom: Date(timeIntervalSince1970: 1_794_312_001),
            source: "test", by: .cli)
        try Self.feed(&reader, LogLines.chat("after", user: 1, at: "2026-11-10T12:00:02Z") + "\n")
        try await reader.advance()
        let result = try await services.ingestor.store(reader, tid: "t", source: "test")
        #expect(result.accepted == 2)
        let versions = try await db.pool.withConnection { connection in
            try connection.query("SELECT request_id, price_version_id FROM request_logs ORDER BY request_id").map {
                row in (try row.decode(0, as: String.self), try row.decode(1, as: Int64.self))
            }
        }
        #expect(versions.map(\.0) == ["after", "before"])
        #expect(versions[0].1 == newer.version.id && versions[1].1 != newer.version.id)
    }
}
