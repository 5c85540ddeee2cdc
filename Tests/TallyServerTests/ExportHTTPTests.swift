import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

@testable import TallyServer

@Suite("exports and statements over HTTP")
struct ExportHTTPTests {
    static let september = UsageMonth("2026-09")!

    /// A database with a generated September, an admin and the access token of one fixture user.
    static let shared = Task {
        let db = try await TestDatabase.create("exporthttp")
        let fixture = try await UsageFixture.load(into: db, months: [september], linesPerMonth: 2000)
        let (_, admin) = try await Seed(db: db).user("admin", role: .admin)
        let userID = try #require(fixture.usernames.first { $0.value == "synthetic-3" }?.key)
        let token = try await AccountRepository(pool: db.pool).rotateAccessToken(id: userID, by: .cli)
        return (db: db, fixture: fixture, admin: admin, userID: userID, userToken: token)
    }

    @Test("an admin export streams chunked CSV that parses back to the sums; JSON Lines and raw rows too")
    func adminExport() async throws {
        let (db, fixture, admin, _, _) = try await Self.shared.value
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let csv = try await api.get("/api/admin/exports/usage?month=2026-09&by=user,model&format=csv", token: admin)
            #expect(csv.status == 200)
            #expect(csv.headers[.contentType] == "text/csv; charset=utf-8")
            #expect(csv.headers[.contentLength] == nil)
            #expect(csv.headers[.contentDisposition] == "attachment; filename=\"usage-2026-09-user-model.csv\"")
            let rows = try CSVParser.parse(csv.text)
            #expect(rows.first?.first == "user_id")
            #expect(
                UsageFixture.mismatch(
                    Array(rows.dropFirst()), fixture.expectedRows(month: Self.september, by: [.user, .model])) == nil)

            let jsonl = try await api.get("/api/admin/exports/usage?month=2026-09&by=group&format=jsonl", token: admin)
            #expect(jsonl.headers[.contentType] == "application/x-ndjson")
            #expect(
                UsageFixture.mismatch(
                    try JSONLinesExport.rows(jsonl.text, by: [.group]),
                    fixture.expectedRows(month: Self.september, by: [.group])) == nil)

            let raw = try await api.get("/api/admin/exports/usage?month=2026-09&raw=true", token: admin)
            #expect(raw.status == 200)
            #expect(try CSVParser.parse(raw.text).count - 1 == fixture.lines.count)

            let empty = try await api.get("/api/admin/exports/usage?month=2026-02&by=token", token: admin)
            #expect(empty.status == 200)
            #expect(
                empty.text
                    == "token_id,token_name,requests,failed_requests,prompt_tokens,completion_tokens,cached_tokens,cache_write_tokens,audio_input_tokens,audio_output_tokens,images,video_seconds,calls,predict_time,quota,usd\n"
            )
        }
    }

    @Test("bad month, by, format, tz or raw: 400 with a tid; raw rows of a month not kept: 404 with a tid")
    func badRequests() async throws {
        let (db, _, admin, _, userToken) = try await Self.shared.value
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let cases: [(String, String?, Int, String)] = [
                ("/api/admin/exports/usage", admin, 400, "month is required"),
                ("/api/admin/exports/usage?month=2026-13", admin, 400, "month must be YYYY-MM"),
                ("/api/admin/exports/usage?month=26-09", admin, 400, "month must be YYYY-MM"),
                ("/api/admin/exports/usage?month=2026-09&by=planet", admin, 400, "by must list"),
                ("/api/admin/exports/usage?month=2026-09&by=user,user", admin, 400, "twice"),
                ("/api/admin/exports/usage?month=2026-09&by=user,", admin, 400, "by must list"),
                ("/api/admin/exports/usage?month=2026-09&format=xml", admin, 400, "format must be csv or jsonl"),
                ("/api/admin/exports/usage?month=2026-09&by=day&tz=Mars/Olympus", admin, 400, "tz must be"),
                ("/api/admin/exports/usage?month=2026-09&by=user&tz=Asia/Tokyo", admin, 400, "add day to by"),
                ("/api/admin/exports/usage?month=2026-09&raw=maybe", admin, 400, "raw must be true or false"),
                (
                    "/api/admin/exports/usage?month=2026-09&raw=true&format=jsonl", admin, 400,
                    "raw exports every request row"
                ),
                ("/api/admin/exports/usage?month=2026-09&user_id=-4", admin, 400, "user_id"),
                ("/api/admin/exports/usage?month=2025-01&raw=true", admin, 404, "not kept"),
                ("/api/admin/statements/1/2026-9", admin, 400, "month must be YYYY-MM"),
                ("/api/admin/statements/1/2026-09?format=pdf", admin, 400, "format must be json or text"),
                ("/api/admin/statements/987654/2026-09", admin, 404, "user 987654 not found"),
                ("/api/admin/statements/abc/2026-09", admin, 404, "user not found"),
                (
                    "/api/usage/self?month=2026-09&by=user", userToken, 400,
                    "by must list one or more of token, model, day"
                ),
                ("/api/usage/self?month=bad", userToken, 400, "month must be"),
                // Found by a review: a user's raw=true was ignored, and totals came back as if rows.
                (
                    "/api/usage/self?month=2026-09&raw=true", userToken, 400,
                    "raw exports (every request row) are an admin's"
                ),
                ("/api/admin/exports/usage?month=2026-09", userToken, 403, "insufficient permissions"),
                ("/api/admin/statements/1/2026-09", userToken, 403, "insufficient permissions"),
                ("/api/usage/self?month=2026-09", nil, 401, "no access token"),
            ]
            for (uri, token, status, message) in cases {
                let answer = try await api.get(uri, token: token)
                #expect(answer.status == status, "\(uri)")
                #expect(answer.errorMessage?.contains(message) == true, "\(uri): \(answer.errorMessage ?? answer.text)")
                let tid = answer.object["tid"] as? String
                #expect(tid != nil && tid == answer.headers[.xTid], "\(uri)")
            }
        }
    }

    @Test("a user's own usage: same shape as the export, only their rows, no admin needed")
    func selfUsage() async throws {
        let (db, fixture, _, userID, userToken) = try await Self.shared.value
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            for by in [[ExportDimension.model], [.day, .token]] {
                let list = by.map(\.rawValue).joined(separator: ",")
                let answer = try await api.get("/api/usage/self?month=2026-09&by=\(list)", token: userToken)
                #expect(answer.status == 200)
                let rows = Array(try CSVParser.parse(answer.text).dropFirst())
                #expect(
                    UsageFixture.mismatch(rows, fixture.expectedRows(month: Self.september, by: by, userID: userID))
                        == nil)
            }
            let json = try await api.get("/api/usage/self?month=2026-09&format=jsonl", token: userToken)
            let expected = fixture.expectedRows(month: Self.september, by: [.model], userID: userID)
            #expect(UsageFixture.mismatch(try JSONLinesExport.rows(json.text, by: [.model]), expected) == nil)
        }
    }

    @Test("statements over HTTP: JSON that reconciles, and the printable text")
    func statements() async throws {
        let (db, fixture, admin, userID, _) = try await Self.shared.value
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let answer = try await api.get("/api/admin/statements/\(userID)/2026-09", token: admin)
            #expect(answer.status == 200)
            let data = answer.dataObject
            let opening = try #require(int64(data["opening_balance"])),
                credits = try #require(int64(data["total_credits"]))
            let charges = try #require(int64(data["charges"])), closing = try #require(int64(data["closing_balance"]))
            #expect(closing == opening + credits - charges)
            #expect(charges == fixture.quota(month: Self.september, userID: userID))
            #expect(data["charges_usd"] as? String == Money.formatUSD(units: charges))
            let models = try #require(data["charges_by_model"] as? [[String: Any]])
            #expect(models.reduce(Int64(0)) { $0 + (int64($1["quota"]) ?? 0) } == charges)
            #expect(data["month"] as? String == "2026-09")
            let text = try await api.get("/api/admin/statements/\(userID)/2026-09?format=text", token: admin)
            #expect(text.headers[.contentType] == "text/plain; charset=utf-8")
            #expect(text.text.contains("Closing balance"))
            #expect(text.text.contains(Money.formatUSD(units: charges)))
        }
    }

    @Test("the pipe holds at most its capacity, and a consumer that leaves unblocks the producer")
    func pipeBackpressure() async throws {
        let pipe = ChunkPipe(capacity: 2)
        let sent = Counter()
        let producer = Task.detached {
            do {
                for index in 0..<50 {
                    try withUnsafeBytes(of: index) { try pipe.send($0) }
                    sent.add()
                }
                pipe.finish(.success(()))
            } catch {
                pipe.finish(.failure(error))
            }
        }
        var received = 0
        while let _ = try await pipe.next() {
            received += 1
            try await Task.sleep(for: .milliseconds(2))
            // The producer is never more than the pipe's capacity (+ the chunk in hand) ahead.
            #expect(sent.value - received <= 3)
            if received == 20 { break }
        }
        pipe.close()
        await producer.value
        #expect(sent.value < 50)
        let closed = ChunkPipe(capacity: 1, stallLimit: 0.2)
        let stalled = Task.detached { () -> Bool in
            do {
                for _ in 0..<3 { try withUnsafeBytes(of: 1) { try closed.send($0) } }
                return false
            } catch { return error is ChunkPipe.Closed }
        }
        #expect(await stalled.value)
    }

    /// Found by a review: when the client left before the head went out, the writer threw
    /// before running the body, nothing closed the pipe, and the export's COPY held its pooled
    /// connection for the pipe's whole stall limit (two minutes).
    @Test("a reader dropped unread closes its pipe: the blocked producer stops at once, not at its stall limit")
    func droppedReaderClosesPipe() async throws {
        let pipe = ChunkPipe(capacity: 1, stallLimit: 60)
        var reader: ChunkPipeReader? = ChunkPipeReader(pipe)
        let producer = Task.detached { () -> Bool in
            do {
                for _ in 0..<3 { try withUnsafeBytes(of: 1) { try pipe.send($0) } }
                return false
            } catch { return error is ChunkPipe.Closed }
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(reader != nil)
        reader = nil
        let started = ContinuousClock.now
        #expect(await producer.value)
        #expect(ContinuousClock.now - started < .seconds(10))
    }
}

/// A counter shared between a detached producer and the test.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}
