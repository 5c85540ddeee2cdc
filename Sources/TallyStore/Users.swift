import Foundation
import TallyCore
import TallyPostgres

/// An account: who pays. `quota` is the remaining balance in units.
public struct User: Sendable, Equatable, Codable {
    public var id: Int64
    public var username: String
    public var displayName: String
    public var email: String
    public var role: Role
    public var status: UserStatus
    public var group: String
    public var quota: Int64
    public var usedQuota: Int64
    public var requestCount: Int64

    public var isSuspended: Bool { status != .enabled }
}

/// What `create` needs; the access token is generated and returned once.
public struct NewUser: Sendable {
    public var username: String
    public var displayName: String
    public var email: String
    public var role: Role
    public var group: String
    public var quota: Int64

    public init(
        username: String, displayName: String = "", email: String = "", role: Role = .user,
        group: String = "default", quota: Int64 = 0
    ) {
        self.username = username
        self.displayName = displayName
        self.email = email
        self.role = role
        self.group = group
        self.quota = quota
    }
}

/// Who performs an administrative action, for the audit log.
public struct Actor: Sendable {
    public var userID: Int64?
    public var name: String
    public var tid: String?

    public init(userID: Int64?, name: String, tid: String?) {
        self.userID = userID
        self.name = name
        self.tid = tid
    }

    /// The operator at the command line.
    public static let cli = Actor(userID: nil, name: "cli", tid: nil)
}

/// Accounts and their system access tokens.
public protocol UserRepository: Sendable {
    /// Creates a user with a new access token; returns both (the token is shown only now).
    func create(_ user: NewUser, by actor: Actor) async throws -> (user: User, accessToken: String)
    /// The user holding this system access token, if any.
    func find(accessToken: String) async throws -> User?
    func find(id: Int64) async throws -> User?
}

public struct PostgresUserRepository: UserRepository {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    /// The balance figures include what committed batches charged and the fold has not added
    /// yet (migration 0010), so they are exact at every instant. A statement that waits for
    /// the row's lock reads them only after the lock (``AccountRepository/lock(id:on:)``).
    static let columns = columns(account: nil)

    /// The columns of a statement that reads the one account in parameter `account` (`"$1"`):
    /// single-shard on Citus (``SQL/pending(_:user:token:account:)``).
    static func columns(account: String?) -> String {
        func pending(_ column: String) -> String { SQL.pending(column, user: "users.id", account: account) }
        return """
            id, username, display_name, email, role, status, "group", quota - \(pending("quota")), \
            used_quota + \(pending("quota")), request_count + \(pending("requests"))
            """
    }

    public func create(_ user: NewUser, by actor: Actor) async throws -> (user: User, accessToken: String) {
        let token = Secrets.newAccessToken()
        let hash = SecretHash(of: token)
        let created = try await pool.transaction { connection -> User in
            let rows: PostgresRows
            do {
                // A new account owes nothing yet: no pending figures to read.
                rows = try connection.query(
                    """
                    INSERT INTO users (username, display_name, email, role, "group", quota, access_token_hash, access_token_last6)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    RETURNING id, username, display_name, email, role, status, "group", quota, used_quota, request_count
                    """,
                    [
                        user.username, user.displayName, user.email, user.role.rawValue, user.group, user.quota,
                        hash, Secrets.last6(token),
                    ])
            } catch let error as PostgresError where error.sqlState == SQLState.foreignKeyViolation {
                throw StoreError.invalid("unknown group \"\(user.group)\"")
            }
            let created = try Self.decode(rows[0])
            try AccountLookup.claimUsername(created.username, userID: created.id, on: connection)
            try AccountLookup.setAccessToken(hash, userID: created.id, replacing: nil, on: connection)
            try AuditLog.record(
                on: connection, actor: actor, action: "user.create", target: "user:\(created.id)",
                after: [
                    "username": created.username, "role": String(created.role.rawValue),
                    "group": created.group, "quota": String(created.quota),
                ])
            if user.quota != 0 {
                try connection.query(
                    """
                    INSERT INTO ledger (user_id, kind, amount, reason, tid) VALUES ($1, 'topup', $2, 'initial quota', $3)
                    """, [created.id, user.quota, actor.tid])
            }
            return created
        }
        return (created, token)
    }

    public func find(accessToken: String) async throws -> User? {
        let hash = SecretHash(of: accessToken)
        return try await pool.withConnection { connection in
            try connection.query(Self.byTokenHash, [hash]).first.map(Self.decode)
        }
    }

    public func find(id: Int64) async throws -> User? {
        try await pool.withConnection { connection in
            try connection.query("SELECT \(Self.columns(account: "$1")) FROM users WHERE id = $1", [id]).first
                .map(Self.decode)
        }
    }

    private static let byTokenHash = PreparedStatement(
        "users_by_access_token", "SELECT \(columns) FROM users WHERE access_token_hash = $1")

    static func decode(_ row: PostgresRow) throws -> User {
        guard let role = Role(rawValue: try row.decode(4, as: Int.self)) else {
            throw StoreError.internalError("user has an unknown role")
        }
        return User(
            id: try row.decode(0), username: try row.decode(1), displayName: try row.decode(2),
            email: try row.decode(3), role: role, status: try row.decode(5), group: try row.decode(6),
            quota: try row.decode(7), usedQuota: try row.decode(8), requestCount: try row.decode(9))
    }
}

/// The `audit_log` table: every administrative action, with who, what, before/after and tid.
public enum AuditLog {
    static func record(
        on connection: PostgresConnection, actor: Actor, action: String, target: String,
        before: [String: String]? = nil, after: [String: String]? = nil
    ) throws {
        try connection.query(
            """
            INSERT INTO audit_log (actor_id, actor, action, target, before, after, tid)
            VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7)
            """, [actor.userID, actor.name, action, target, before.map(jsonObject), after.map(jsonObject), actor.tid])
    }

    private static func jsonObject(_ fields: [String: String]) -> String {
        "{"
            + fields.sorted { $0.key < $1.key }.map { "\(JSONText.quote($0.key)):\(JSONText.quote($0.value))" }
            .joined(separator: ",") + "}"
    }
}
