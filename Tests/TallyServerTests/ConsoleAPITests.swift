import Foundation
import TallyCore
import TallyStore
import TallyTestSupport
import Testing

/// The System API routes the web console needed and the API lacked (issue 18): an admin's view of a
/// user's keys and the tid search of the caller's own logs.
@Suite("Console: API additions")
struct ConsoleAPITests {
    @Test("GET /api/admin/users/{id}/tokens: a user's keys, masked and paged; 404 for no such user")
    func adminListsUserKeys() async throws {
        let db = try await TestDatabase.shared("console")
        let seed = Seed(db: db)
        let (_, adminAccess) = try await seed.user("admin", role: .admin)
        let (user, _) = try await seed.user("owner")
        let (other, _) = try await seed.user("other")
        var created: [String] = []
        for index in 1...3 {
            created.append(try await seed.key(user: user.id, TokenDraft(name: "k\(index)", unlimitedQuota: true)).key)
        }
        let keys = created
        _ = try await seed.key(user: other.id, TokenDraft(name: "not-theirs", unlimitedQuota: true))
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let first = try await api.get("/api/admin/users/\(user.id)/tokens?p=1&page_size=2", token: adminAccess)
            #expect(first.status == 200)
            #expect(first.dataObject["total"] as? Int == 3)
            #expect(first.dataObject["page_size"] as? Int == 2)
            let items = try #require(first.dataObject["items"] as? [[String: Any]])
            #expect(items.map { $0["name"] as? String } == ["k3", "k2"])
            #expect(items.map { $0["key"] as? String } == [keys[2], keys[1]].map { "sk-\u{2026}" + $0.suffix(6) })
            #expect(items.allSatisfy { $0["user_id"] as? Int64 == user.id })
            let second = try await api.get("/api/admin/users/\(user.id)/tokens?p=2&page_size=2", token: adminAccess)
            #expect((second.dataObject["items"] as? [[String: Any]])?.map { $0["name"] as? String } == ["k1"])
            #expect(!second.text.contains(keys[0]))
            let missing = try await api.get("/api/admin/users/999999999/tokens", token: adminAccess)
            #expect(missing.status == 404)
            #expect(missing.errorCode == "not_found")
        }
    }

    @Test("GET /api/log/self?tid= finds the caller's requests logged under that tid, and no one else's")
    func selfLogsByTid() async throws {
        let db = try await TestDatabase.shared("console")
        let seed = Seed(db: db)
        let (user, access) = try await seed.user("tid")
        let (other, _) = try await seed.user("other")
        let (token, _) = try await seed.key(user: user.id)
        let (otherToken, _) = try await seed.key(user: other.id)
        let run = UUID().uuidString
        let tid = TraceID.generate()
        try await LogAPITests.request(
            seed, id: "\(run)-1", user: user.id, token: token.id, model: "gpt-4o", quota: 10,
            tid: tid)
        try await LogAPITests.request(
            seed, id: "\(run)-2", user: user.id, token: token.id, model: "gpt-4o", quota: 20,
            tid: TraceID.generate())
        try await LogAPITests.request(
            seed, id: "\(run)-3", user: other.id, token: otherToken.id, model: "gpt-4o",
            quota: 30,
            tid: tid)
        try await TestApp.build(db).test(.live) { client in
            let api = API(client: client)
            let found = try await api.get("/api/log/self?tid=\(tid.uppercased())", token: access)
            #expect(found.status == 200)
            let items = try #require(found.dataObject["items"] as? [[String: Any]])
            #expect(items.map { $0["request_id"] as? String } == ["\(run)-1"])
            #expect((items.first?["other"] as? String)?.contains(tid) == true)
            let stat = try await api.get("/api/log/self/stat?tid=\(tid)", token: access)
            #expect(int64(stat.dataObject["quota"]) == 10)
            let all = try await api.get("/api/log/self", token: access)
            #expect(all.dataObject["total"] as? Int == 2)
            for bad in ["xyz", String(repeating: "g", count: 32), tid + "0"] {
                let refused = try await api.get("/api/log/self?tid=\(bad)", token: access)
                #expect(refused.status == 400, "\(bad)")
                #expect(refused.errorMessage == "tid must be 32 hexadecimal characters")
            }
        }
    }
}
