import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyServer
import TallyStore
import TallyTestSupport
import Testing

/// Mutated gateway lines (IngestLineFuzzer) through the live server and PostgreSQL, in its own
/// database. `TALLY_FUZZ_SEED` replays a run; every failure names the seed, batch and line.
@Suite("ingest fuzzed over HTTP", .serialized)
struct IngestFuzzHTTPTests {
    static let seed = ProcessInfo.processInfo.environment["TALLY_FUZZ_SEED"].flatMap(UInt64.init) ?? 20_261_123
    static let users = 30
    static let initialQuota: Int64 = 1_000_000_000_000
    static let auth: HTTPFields = [.authorization: "Bearer test-gateway-secret", .contentType: "application/x-ndjson"]

    /// Totals over the run.
    struct Tally {
        var lines = 0
        var accepted = 0
        var duplicates = 0
        var rejected = 0
        var rejectedIDs: [String] = []
        /// Unmutated lines, by request id, to price independently.
        var valid: [String: String] = [:]
        var codes: [String: Int] = [:]
        /// JSON array batches answered 200, and 400 (a mutated element broke the array).
        var arraysAccepted = 0
        var arraysRefused = 0
    }

    @Test(
        "10,000 mutated lines in NDJSON batches, 1,000 in JSON arrays: no crash, 200 or an enveloped error, documented codes, rejected lines charge nothing"
    )
    func fuzz() async throws {
        let db = try await TestDatabase.shared("ingestfuzz")
        try await db.prepareBilling(users: Self.users, quota: Self.initialQuota)
        let tally = try await TestApp.build(db).test(.live) { client in
            var fuzzer = IngestLineFuzzer(seed: Self.seed, users: Self.users, prefix: "fuzz")
            var tally = Tally()
            for batch in 0..<20 {
                try await Self.postNDJSON(client, batch: batch, lines: 500, fuzzer: &fuzzer, tally: &tally)
            }
            // Small arrays, so that many are not broken as a whole by one of their elements.
            for batch in 0..<100 {
                try await Self.postArray(client, batch: batch, lines: 10, fuzzer: &fuzzer, tally: &tally)
            }
            return tally
        }
        print(
            "ingest fuzz over HTTP (seed \(Self.seed)): \(tally.lines) lines, \(tally.accepted) accepted, \(tally.duplicates) duplicates, "
                + "\(tally.rejected) rejected: \(tally.codes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))"
        )
        print("  JSON arrays: \(tally.arraysAccepted) answered 200, \(tally.arraysRefused) refused whole (400)")
        #expect(tally.lines >= 10_000)
        #expect(tally.arraysAccepted > 0 && tally.arraysRefused > 0)

        // Only accepted lines were stored and charged, each exactly at its price.
        let rows = try await db.scalar("SELECT count(*) FROM request_logs")
        #expect(rows == Int64(tally.accepted))
        let charged = try await db.scalar("SELECT coalesce(sum(quota), 0)::bigint FROM request_logs")
        let spent = try await db.scalar(
            "SELECT sum($1::bigint - b.quota)::bigint FROM user_balances b JOIN users u ON u.id = b.id WHERE u.username LIKE 'synthetic-%'",
            [Self.initialQuota])
        #expect(spent == charged, "balances moved by \(spent), stored lines cost \(charged)")
        let storedRejected = try await db.scalar(
            "SELECT count(*) FROM request_logs WHERE request_id = ANY(string_to_array($1, E'\\n'))",
            [tally.rejectedIDs.joined(separator: "\n")])
        #expect(storedRejected == 0, "rejected request ids were stored")
        let expected = try IngestInvariants.expectedCharges(tally.valid.values)
        let valuedIDs = tally.valid.keys.joined(separator: "\n")
        let validCost = try await db.scalar(
            "SELECT coalesce(sum(quota), 0)::bigint FROM request_logs WHERE request_id = ANY(string_to_array($1, E'\\n'))",
            [valuedIDs])
        #expect(validCost == expected.values.reduce(0, +), "unmutated lines were not charged their price")
        let violations = try await Auditor(pool: db.pool).run()
        #expect(violations.isEmpty, "\(violations.prefix(5))")
    }

    static func postNDJSON(
        _ client: some TestClientProtocol, batch: Int, lines: Int, fuzzer: inout IngestLineFuzzer, tally: inout Tally
    ) async throws {
        // The first line is valid: a body starting with "[" would be read as a JSON array.
        var cases = [FuzzCase(bytes: fuzzer.validLine().bytes, mutation: "none", expectation: .accept)]
        while cases.count < lines { cases.append(fuzzer.next()) }
        var body: [UInt8] = []
        for fuzzCase in cases { body += fuzzCase.bytes + [0x0A] }
        let answer = try await post(client, body)
        let place = "seed \(seed) NDJSON batch \(batch)"
        guard answer.status == 200 else {
            Issue.record("\(place): status \(answer.status) \(answer.text.prefix(300))")
            return
        }
        let rejected = try record(answer, lines: cases.count, where: place, tally: &tally)
        for (index, fuzzCase) in cases.enumerated() {
            let reject = rejected[index + 1]
            let label = "\(place) line \(index + 1) (\(fuzzCase.mutation)): \(fuzzCase.text)"
            switch fuzzCase.expectation {
            case .accept: #expect(reject == nil, "\(label): rejected \(reject ?? "")")
            case .reject: #expect(reject != nil, "\(label): accepted")
            case .either: break
            }
            let line = String(decoding: fuzzCase.bytes, as: UTF8.self)
            if fuzzCase.mutation == "none", reject == nil, let id = LogLines.requestID(of: line) {
                tally.valid[id] = line
            }
        }
    }

    /// A JSON array batch: a mutated element may break the array itself (400 for the whole batch).
    static func postArray(
        _ client: some TestClientProtocol, batch: Int, lines: Int, fuzzer: inout IngestLineFuzzer, tally: inout Tally
    ) async throws {
        var body: [UInt8] = Array("[".utf8)
        for index in 0..<lines {
            if index > 0 { body.append(UInt8(ascii: ",")) }
            body += fuzzer.next().bytes
        }
        body += Array("]".utf8)
        let answer = try await post(client, body)
        let place = "seed \(seed) array batch \(batch)"
        if answer.status == 200 {
            tally.arraysAccepted += 1
            _ = try record(answer, lines: nil, where: place, tally: &tally)
        } else {
            tally.arraysRefused += 1
            #expect(
                answer.status == 400 && answer.errorCode == "invalid_request",
                "\(place): \(answer.status) \(answer.text.prefix(300))")
            tally.lines += lines
        }
    }

    static func post(_ client: some TestClientProtocol, _ body: [UInt8]) async throws -> Answer {
        try await client.execute(uri: "/gateway/v1/logs", method: .post, headers: auth, body: ByteBuffer(bytes: body)) {
            response in
            let text = String(buffer: response.body)
            let object = try? JSONSerialization.jsonObject(with: Data(text.utf8))
            if response.status != .ok {
                // Every error is the gateway envelope with the tid of the X-Tid header.
                let error = EnvelopeError(Data(text.utf8))
                #expect(
                    error?.tidIsValid == true && error?.tid == response.headers[.xTid],
                    "\(response.status): \(text.prefix(300))")
            }
            return Answer(
                status: Int(response.status.code), headers: response.headers, body: object ?? NSNull(), text: text)
        }
    }

    /// Checks a 200 answer's accounting and codes; returns its rejects by line number.
    static func record(_ answer: Answer, lines: Int?, where label: String, tally: inout Tally) throws -> [Int: String] {
        let object = answer.object
        let accepted = try #require(object["accepted"] as? Int, "\(label): \(answer.text.prefix(300))")
        let duplicates = try #require(object["duplicates"] as? Int)
        let rejects = try #require(object["rejected"] as? [[String: Any]])
        #expect(TraceID.isValid(object["tid"] as? String ?? ""))
        if let lines {
            #expect(accepted + duplicates + rejects.count == lines, "\(label): not every line accounted for")
        }
        tally.lines += accepted + duplicates + rejects.count
        tally.accepted += accepted
        tally.duplicates += duplicates
        tally.rejected += rejects.count
        var byLine: [Int: String] = [:]
        for reject in rejects {
            let code = reject["code"] as? String ?? ""
            let line = reject["line"] as? Int ?? 0
            #expect(
                IngestLineFuzzer.documentedRejectCodes.contains(code),
                "\(label) line \(line): undocumented code \(code)")
            #expect(!(reject["message"] as? String ?? "").isEmpty, "\(label) line \(line): no message")
            if let lines { #expect((1...lines).contains(line), "\(label): reject of line \(line)") }
            tally.codes[code, default: 0] += 1
            byLine[line] = "\(code): \(reject["message"] as? String ?? "")"
            if let id = reject["request_id"] as? String { tally.rejectedIDs.append(id) }
        }
        return byLine
    }
}
