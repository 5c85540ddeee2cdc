import Foundation
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

/// Migration 0014: the unique keys and cache notifications that do not depend on one database.
/// These run on plain PostgreSQL and, in ops/slow-tests/citus, on the Citus cluster.
@Suite("account lookup and change notices (Citus-ready schema)")
struct AccountLookupTests {
    /// Every username, access token and key of the database has exactly its lookup row (a key two:
    /// by its hash and by its id).
    static func lookupMismatches(_ db: TestDatabase) async throws -> Int64 {
        let missing = try await db.scalar(
            """
            SELECT count(*) FROM (
                (SELECT convert_to(username, 'UTF8') AS lookup, 'username' AS kind, id AS user_id,
                        NULL::bigint AS token_id FROM users
                 UNION ALL SELECT access_token_hash, 'access_token', id, NULL FROM users
                           WHERE access_token_hash IS NOT NULL
                 UNION ALL SELECT key_hash, 'key', user_id, id FROM tokens
                 UNION ALL SELECT int8send(id), 'token', user_id, id FROM tokens)
                EXCEPT ALL SELECT lookup, kind, user_id, token_id FROM account_lookup
            ) missing
            """)
        let expected =
            try await db.scalar("SELECT count(*) FROM users")
            + db.scalar("SELECT count(*) FROM users WHERE access_token_hash IS NOT NULL")
            + 2 * db.scalar("SELECT count(*) FROM tokens")
        return try await missing + abs(db.scalar("SELECT count(*) FROM account_lookup") - expected)
    }

    @Test("usernames, access tokens and keys are unique across accounts through account_lookup")
    func uniqueness() async throws {
        let db = try await TestDatabase.create("lookup")
        let accounts = AccountRepository(pool: db.pool)
        let tokens = TokenRepository(pool: db.pool)
        var created: [User] = []
        for index in 0..<6 {
            created.append(try await accounts.create(NewUser(username: "user-\(index)"), actorRole: nil, by: .cli).user)
        }
        let users = created
        await #expect(throws: StoreError.conflict("username \"user-3\" is taken")) {
            try await accounts.create(NewUser(username: "user-3"), actorRole: nil, by: .cli)
        }
        await #expect(throws: StoreError.conflict("username \"user-1\" is taken")) {
            try await accounts.update(id: users[0].id, AccountChanges(username: "user-1"), actorRole: nil, by: .cli)
        }
        // A rename frees the old name for another account.
        _ = try await accounts.update(id: users[0].id, AccountChanges(username: "renamed"), actorRole: nil, by: .cli)
        let reuse = try await accounts.create(NewUser(username: "user-0"), actorRole: nil, by: .cli)
        let (_, key) = try await tokens.create(userID: users[2].id, TokenDraft(name: "k", unlimitedQuota: true))
        _ = try await tokens.create(userID: reuse.user.id, TokenDraft(name: "k", unlimitedQuota: true))
        // A rotated access token replaces the old one in the lookup, and the old one stops working.
        let rotated = try await accounts.rotateAccessToken(id: users[4].id, by: .cli)
        #expect(try await PostgresUserRepository(pool: db.pool).find(accessToken: rotated)?.id == users[4].id)
        #expect(try await tokens.find(key: key)?.owner.id == users[2].id)
        #expect(try await Self.lookupMismatches(db) == 0)
        // A second row for an existing key is refused by the lookup's primary key.
        await #expect(throws: PostgresError.self) {
            try await db.pool.withConnection { connection in
                try connection.query(
                    """
                    INSERT INTO account_lookup (lookup, kind, user_id, token_id) VALUES ($1, 'key', $2, 1)
                    """, [SecretHash(of: key), users[5].id])
            }
        }
    }

    /// Found by a review: the rotation read the old hash from its statement's snapshot, so the
    /// second of two concurrent rotations removed a lookup row already gone and left the first's.
    @Test("concurrent rotations of one access token leave exactly the last token in the lookup")
    func concurrentRotations() async throws {
        let db = try await TestDatabase.create("lookuprotate")
        let accounts = AccountRepository(pool: db.pool)
        let user = try await accounts.create(NewUser(username: "rotating"), actorRole: nil, by: .cli).user
        for _ in 0..<5 {
            try await withThrowingTaskGroup(of: String.self) { group in
                for _ in 0..<6 { group.addTask { try await accounts.rotateAccessToken(id: user.id, by: .cli) } }
                try await group.waitForAll()
            }
        }
        #expect(try await Self.lookupMismatches(db) == 0)
        #expect(try await db.scalar("SELECT count(*) FROM account_lookup WHERE kind = 'access_token'") == 1)
    }

    @Test("a change to a key, user, group or channel is announced on tally_changes by the code that makes it")
    func changeNotices() async throws {
        let db = try await TestDatabase.create("notices")
        let accounts = AccountRepository(pool: db.pool)
        let tokens = TokenRepository(pool: db.pool)
        let user = try await accounts.create(NewUser(username: "noticed"), actorRole: nil, by: .cli).user
        let (token, _) = try await tokens.create(userID: user.id, TokenDraft(name: "k", unlimitedQuota: true))
        var notices = try NoticeQueue(url: db.url)
        let groups = GroupRepository(pool: db.pool)
        let channels = ChannelRepository(pool: db.pool)
        let changes: [(String, () async throws -> Void)] = [
            ("user:\(user.id)", { _ = try await accounts.manage(id: user.id, .disable, actorRole: nil, by: .cli) }),
            (
                "user:\(user.id)",
                {
                    _ = try await accounts.update(id: user.id, AccountChanges(email: "a@b.c"), actorRole: nil, by: .cli)
                }
            ),
            (
                "token:\(token.id)",
                {
                    _ = try await tokens.update(id: token.id, userID: user.id, TokenChanges(name: "renamed"))
                }
            ),
            ("token:\(token.id)", { try await tokens.delete(id: token.id, userID: user.id) }),
            ("group:vip2", { _ = try await groups.create(name: "vip2", by: .cli) }),
            ("group:vip2", { _ = try await groups.update(name: "vip2", GroupChanges(selectable: false), by: .cli) }),
            ("group:vip2", { try await groups.delete(name: "vip2", by: .cli) }),
        ]
        for (payload, change) in changes {
            try await change()
            #expect(try notices.next() == payload)
        }
        let channel = try await channels.create(ChannelDraft(name: "c", models: ["gpt-4o"]), by: .cli)
        #expect(try notices.next() == "channel:\(channel.id)")
        _ = try await channels.update(id: channel.id, ChannelChanges(status: .disabled), by: .cli)
        #expect(try notices.next() == "channel:\(channel.id)")
    }
}

/// `tally_changes` payloads in the order they arrive, on a connection of its own.
struct NoticeQueue {
    let connection: PostgresConnection
    var pending: [String] = []

    init(url: String) throws {
        connection = try PostgresConnection(url: url)
        try connection.execute("LISTEN tally_changes")
    }

    /// The next payload, waiting up to 10 s for it.
    mutating func next() throws -> String? {
        let deadline = Date().addingTimeInterval(10)
        while pending.isEmpty, Date() < deadline {
            pending += try connection.waitForNotifications(timeout: 0.5).map(\.payload)
        }
        return pending.isEmpty ? nil : pending.removeFirst()
    }
}
