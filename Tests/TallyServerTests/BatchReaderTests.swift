import Foundation
import TallyCore
import TallyStore
import TallyTestSupport
import Testing

@testable import TallyServer

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

    @Test(
        "a batch's first line of a request is the one kept, when it waits for its key's owner and a repeat's is cached"
    )
    func firstRepeatKeptWhateverTheCache() async throws {
        let db = try await TestDatabase.create("batchreader")
        try await db.prepareBilling(users: 1)
        let services = TallyServices(pool: db.pool)
        try await services.prices.reload()
        let tokenID = try await db.pool.withConnection { connection in
            try connection.query("SELECT id FROM tokens WHERE user_id = 1")[0].decode(0, as: Int64.self)
        }
        // The token cached by its id (an earlier batch's `token_id` line), not by its key's hash.
        _ = try await services.ingestor.tokens.resolve(hashes: [], tokenIDs: [tokenID])
        let first = LogLines.chat("r1", user: 1, prompt: 1000)
        let repeated =
            #"{"request_id":"r1","created_at":"2026-11-10T12:00:00Z","token_id":\#(tokenID),"model":"gpt-4o","kind":"chat","status":200,"usage":{"prompt_tokens":9000,"completion_tokens":500}}"#
        var reader = services.ingestor.reader(format: .gateway)
        try Self.feed(&reader, LogLines.ndjson([first, repeated]))
        try await reader.advance()
        let result = try await services.ingestor.store(reader, tid: "t", source: "test")
        #expect(result.accepted == 1 && result.duplicates == 1)
        let prompts = try await db.pool.withConnection { connection in
            try connection.query("SELECT prompt_tokens FROM request_logs").map { try $0.decode(0, as: Int64.self) }
        }
        // Before, the repeat (its owner cached) was priced while the first line waited for
        // the lookup, and was stored in its place.
        #expect(prompts == [1000])
    }
}
