import Foundation
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// No overdraft under any interleaving: 10,000 concurrent authorizations of cost c against an
/// account holding 100·c, through real `tally serve` processes.
@Suite("Enforcement: concurrent authorizations never overdraw")
struct AuthorizeRaceTests {
    static let attempts = 10_000
    static let affordable = 100
    static let concurrency = 64

    @Test("10,000 concurrent holds of c on 100·c: exactly 100 succeed, the balance is exact after settlement",
          arguments: [1, 2])
    func exactlyAffordable(serverCount: Int) async throws {
        let db = try await TestDatabase.create("authorize-race")
        let seed = Seed(db: db)
        try await seed.prices(enforcementSheet)
        _ = try await seed.channel(groups: ["default"], models: ["gpt-4o"])
        let (user, _) = try await seed.user(quota: Int64(Self.affordable) * chatHold)
        // A limited key with room for 150: the user's balance is what binds.
        let key = try await seed.key(user: user.id, TokenDraft(name: "k", remainQuota: 150 * chatHold, unlimitedQuota: false)).key
        let servers = try (0..<serverCount).map { _ in try ServerProcess(databaseURL: db.url) }
        let headers = ["Authorization": "Bearer \(servers[0].gatewaySecret)", "Content-Type": "application/json"]

        let granted = try await withThrowingTaskGroup(of: [String].self) { group in
            for worker in 0..<Self.concurrency {
                group.addTask {
                    var mine: [String] = []
                    for attempt in stride(from: worker, to: Self.attempts, by: Self.concurrency) {
                        let server = servers[attempt % servers.count]
                        let requestID = "race-\(attempt)"
                        let body = #"{"request_id":"\#(requestID)","key":"\#(key)","model":"gpt-4o","estimate":{"prompt_tokens":1000,"max_tokens":500}}"#
                        let answer = try await HTTP.sendAsync("POST", "\(server.baseURL)/gateway/v1/authorize", headers: headers,
                                                              body: Data(body.utf8))
                        if answer.status == 200 {
                            mine.append(requestID)
                        } else {
                            #expect(answer.status == 403 && answer.text.contains("insufficient_user_quota"), "\(answer.text)")
                        }
                    }
                    return mine
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(granted.count == Self.affordable)
        #expect(try await seed.int("SELECT reserved FROM users WHERE id = $1", [user.id]) == Int64(Self.affordable) * chatHold)

        // Settle every hold at exactly its estimate, through both servers.
        let lines = granted.map {
            #"{"request_id":"\#($0)","created_at":"\#(Gateway.now)","key":"\#(key)","model":"gpt-4o","kind":"chat","status":200,"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#
        }
        for (index, chunk) in stride(from: 0, to: lines.count, by: 25).map({ Array(lines[$0..<min($0 + 25, lines.count)]) }).enumerated() {
            let answer = try await HTTP.sendAsync("POST", "\(servers[index % servers.count].baseURL)/gateway/v1/logs",
                                                  headers: headers, body: Data(chunk.joined(separator: "\n").utf8))
            #expect(answer.status == 200, "\(answer.text)")
        }
        #expect(try await seed.int("SELECT quota FROM users WHERE id = $1", [user.id]) == 0)
        #expect(try await seed.int("SELECT reserved FROM users WHERE id = $1", [user.id]) == 0)
        #expect(try await seed.int("SELECT remain_quota FROM tokens WHERE user_id = $1", [user.id]) == 50 * chatHold)
        #expect(try await seed.int("SELECT count(*) FROM holds WHERE status = 'settled'") == Int64(Self.affordable))
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
        servers.forEach { $0.stop() }
    }
}
