import TallyCore
import Testing

@Suite("tally_changes payloads")
struct ChangeNoticeTests {
    static let everyKind: [(ChangeNotice, String)] = [
        (.token(42), "token:42"),
        (.user(7), "user:7"),
        (.group("vip"), "group:vip"),
        (.group("a:b"), "group:a:b"),
        (.channel(3), "channel:3"),
        (.import, "import"),
        (.prices, "prices"),
        (.logsDropped, "logs-dropped"),
        (.overdrawn(.user(9)), "overdrawn:user:9"),
        (.overdrawn(.token(10)), "overdrawn:token:10"),
        (.leaseWanted(.user(11)), "lease-wanted:user:11"),
        (.leaseWanted(.token(9_223_372_036_854_775_807)), "lease-wanted:token:9223372036854775807"),
        (.everything, "*"),
    ]

    @Test("every kind is written as the SQL and the listeners spell it, and read back")
    func everyKindRoundTrips() {
        for (notice, payload) in Self.everyKind {
            #expect(notice.payload == payload)
            #expect(ChangeNotice(payload: payload) == notice)
        }
    }

    @Test("the payloads the settlement SQL sends (migrations 0009, 0010, 0015) are read")
    func settlementPayloads() {
        // 'overdrawn:user:' || u.id and 'lease-wanted:token:' || w.id
        #expect(ChangeNotice(payload: "overdrawn:user:" + String(Int64(123))) == .overdrawn(.user(123)))
        #expect(ChangeNotice(payload: "lease-wanted:token:" + String(Int64(5))) == .leaseWanted(.token(5)))
    }

    @Test(
        "malformed payloads are not read",
        arguments: [
            "", ":", "token", "token:", "token:x", "token:-1", "token:+1", "token: 1", "token:1 ", "token:1:2",
            "token:99999999999999999999", "user:", "user:1.5", "channel:", "channel:abc", "group:", "imports",
            "import:1", "**", "overdrawn:", "overdrawn:user", "overdrawn:user:", "overdrawn:group:1",
            "overdrawn:token:x", "lease-wanted:channel:1", "lease-wanted:user:1:2", "lease_wanted:user:1",
            "Token:1", "session:1", "overdrawn:*",
        ])
    func malformed(payload: String) {
        #expect(ChangeNotice(payload: payload) == nil)
    }
}
