import Foundation
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

@Suite("API keys in the store")
struct TokensTests {
    /// Batches charge a key without its row lock, so one may commit while an edit of the key is
    /// between reading its remaining quota and writing the key: the edit must not write back the
    /// figure it read. The UPDATE is held at its table lock (another session's SHARE lock lets
    /// the edit's reads and row lock through) while a charge commits.
    @Test("an edit that leaves a key's quota as it was keeps the charges committed while it ran")
    func editKeepsConcurrentCharges() async throws {
        let db = try await TestDatabase.create("token-edit")
        try await db.prepareBilling(users: 1)
        let (userID, tokenID) = try await db.syntheticAccount(1)
        func charge(_ quota: Int64, batch: Int64) async throws {
            _ = try await db.pool.withConnection { connection in
                try connection.query(
                    """
                    INSERT INTO pending_charges
                        (user_id, token_id, batch_id, quota, requests, user_returned, token_returned)
                    VALUES ($1, $2, $3, $4, 1, 0, 0)
                    """, [userID, tokenID, batch, quota])
            }
        }
        _ = try await db.pool.withConnection {
            try $0.query("UPDATE tokens SET unlimited_quota = false, remain_quota = 1000 WHERE id = $1", [tokenID])
        }
        try await charge(100, batch: -1)
        let writers = try await TestSession.open(db.url)
        let writersPID = try await writers.run { try $0.query("SELECT pg_backend_pid()")[0].decode(0, as: Int64.self) }
        try await writers.run { session in
            try session.execute("BEGIN")
            try session.execute("LOCK TABLE tokens IN SHARE MODE")
        }
        let edit = Task {
            try await TokenRepository(pool: db.pool).update(id: tokenID, userID: userID, TokenChanges(name: "renamed"))
        }
        let blocked = try await db.queryBlocked(by: writersPID)
        #expect(blocked?.contains("UPDATE tokens") == true, "the edit never reached its write (\(blocked ?? "-"))")
        try await charge(50, batch: -2)
        try await writers.run { try $0.execute("COMMIT") }
        #expect(try await edit.value.name == "renamed")
        try await db.fold()
        #expect(try await db.scalar("SELECT remain_quota FROM tokens WHERE id = $1", [tokenID]) == 850)
    }

    /// Found by a review: a group's deletion counts the keys and channels naming it, and a key or
    /// channel given the group while the deletion ran read the group as it was, so it named a
    /// group that no longer existed.
    @Test("a key or channel given a group being deleted waits for the deletion and is then refused")
    func groupDeletedMeanwhile() async throws {
        let db = try await TestDatabase.create("token-group-delete")
        try await db.prepareBilling(users: 1)
        let (userID, _) = try await db.syntheticAccount(1)
        let groups = GroupRepository(pool: db.pool)
        for name in ["vip", "gold"] { _ = try await groups.create(name: name, by: .cli) }
        let attempts: [(group: String, give: @Sendable () async throws -> Void)] = [
            (
                "vip",
                {
                    _ = try await TokenRepository(pool: db.pool).create(
                        userID: userID, TokenDraft(name: "k", group: "vip"))
                }
            ),
            (
                "gold",
                {
                    _ = try await ChannelRepository(pool: db.pool).create(
                        ChannelDraft(name: "c", groups: ["gold"]), by: .cli)
                }
            ),
        ]
        for attempt in attempts {
            let deleting = try await TestSession.open(db.url)
            let deletingPID = try await deleting.run {
                try $0.query("SELECT pg_backend_pid()")[0].decode(0, as: Int64.self)
            }
            try await deleting.run { session in
                try session.execute("BEGIN")
                try session.query("DELETE FROM groups WHERE name = $1", [attempt.group])
            }
            let giving = Task { try await attempt.give() }
            let blocked = try await db.queryBlocked(by: deletingPID, timeout: .seconds(10))
            #expect(blocked?.contains("groups") == true, "\(attempt.group): never waited for the deletion")
            try await deleting.run { try $0.execute("COMMIT") }
            await #expect(throws: StoreError.self, "\(attempt.group)") { try await giving.value }
        }
        #expect(try await db.scalar(#"SELECT count(*) FROM tokens WHERE "group" = 'vip'"#) == 0)
        #expect(try await db.scalar("SELECT count(*) FROM channels WHERE 'gold' = ANY (groups)") == 0)
    }
}
