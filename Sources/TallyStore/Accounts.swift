import Foundation
import TallyCore
import TallyPostgres

/// Refused because the actor's role is too low for the target (new-api's rule: only root, or
/// a role strictly above the target's, may manage a user).
public struct PermissionDenied: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: String
    public var description: String { reason }
}

/// A change to an account by an admin; nil fields keep their value.
public struct AccountChanges: Sendable, Equatable {
    public var username: String?
    public var displayName: String?
    public var email: String?
    public var group: String?
    /// The new balance; the difference is written to the ledger as an adjustment.
    public var quota: Int64?

    public init(
        username: String? = nil, displayName: String? = nil, email: String? = nil, group: String? = nil,
        quota: Int64? = nil
    ) {
        self.username = username
        self.displayName = displayName
        self.email = email
        self.group = group
        self.quota = quota
    }
}

/// `POST /api/user/manage` actions (new-api's names).
public enum ManageAction: Sendable, Equatable {
    case enable, disable, promote, demote
    /// new-api's `add_quota` with `mode` add, subtract or override and a `value`.
    case addQuota(mode: QuotaMode, value: Int64)

    public enum QuotaMode: String, Sendable { case add, subtract, override }
}

extension NewUser {
    /// Every rule a new account obeys.
    func check() throws(RuleViolation) {
        try AccountRules.checkUsername(username)
        try AccountRules.checkDisplayName(displayName)
        try AccountRules.checkEmail(email)
        try GroupRules.checkMember(group)
        try TokenRules.checkQuota(quota, field: "quota")
    }
}

/// Administration of accounts: listing, changes, status and role, balance adjustments and
/// system access tokens. Every change is audited and every balance change is a ledger row,
/// each in the transaction of the change.
public struct AccountRepository: Sendable {
    let pool: PostgresPool
    let users: PostgresUserRepository

    public init(pool: PostgresPool) {
        self.pool = pool
        users = PostgresUserRepository(pool: pool)
    }

    static var columns: String { PostgresUserRepository.columns }

    /// Users by id; `keyword` matches the username, display name or email (case-insensitive
    /// substring) or the id.
    public func list(page: PageRequest, keyword: String? = nil) async throws -> Page<User> {
        let pattern = keyword.flatMap { $0.isEmpty ? nil : "%" + Self.escapeLike($0) + "%" }
        let id = keyword.flatMap { Int64($0) } ?? -1
        return try await pool.withConnection { connection in
            let filter =
                pattern == nil ? "TRUE" : "(username ILIKE $1 OR display_name ILIKE $1 OR email ILIKE $1 OR id = $2)"
            let parameters: [any PostgresEncodable] = pattern == nil ? [] : [pattern!, id]
            let total = try connection.query("SELECT count(*) FROM users WHERE \(filter)", parameters)[0].decode(
                0, as: Int.self)
            let offset = parameters.count
            let rows = try connection.query(
                """
                SELECT \(Self.columns) FROM users WHERE \(filter) ORDER BY id DESC LIMIT $\(offset + 1) OFFSET $\(offset + 2)
                """, parameters + [page.size, page.offset])
            return Page(items: try rows.map(PostgresUserRepository.decode), total: total, request: page)
        }
    }

    public func get(id: Int64) async throws -> User {
        guard let user = try await users.find(id: id) else { throw StoreError.notFound("user \(id) not found") }
        return user
    }

    /// Creates an account with its first access token. `actorRole` (nil for the CLI) must be
    /// above the new role, as in new-api.
    public func create(_ user: NewUser, actorRole: Role?, by actor: Actor) async throws -> (
        user: User, accessToken: String
    ) {
        try user.check()
        if let actorRole, user.role >= actorRole {
            throw PermissionDenied(reason: "cannot create a user with a role equal to or above your own")
        }
        return try await users.create(user, by: actor)
    }

    /// Applies an admin's changes. A new `quota` writes an `adjust` ledger row for the difference.
    public func update(id: Int64, _ changes: AccountChanges, actorRole: Role?, by actor: Actor) async throws -> User {
        if let username = changes.username { try AccountRules.checkUsername(username) }
        if let displayName = changes.displayName { try AccountRules.checkDisplayName(displayName) }
        if let email = changes.email { try AccountRules.checkEmail(email) }
        if let group = changes.group { try GroupRules.checkMember(group) }
        if let quota = changes.quota {
            guard quota >= -QuotaLimits.maximum, quota <= QuotaLimits.maximum else {
                throw StoreError.invalid(
                    "quota must be between \(-QuotaLimits.maximum) and \(QuotaLimits.maximum), got \(quota)")
            }
        }
        return try await pool.transaction { connection in
            let before = try Self.lock(id: id, on: connection)
            guard Role.canManage(actor: actorRole, target: before.role) else {
                throw PermissionDenied(reason: "cannot change a user whose role is equal to or above your own")
            }
            var after = before
            if let username = changes.username { after.username = username }
            if let displayName = changes.displayName { after.displayName = displayName }
            if let email = changes.email { after.email = email }
            if let group = changes.group, group != before.group {
                guard try !connection.query("SELECT 1 FROM groups WHERE name = $1", [group]).isEmpty else {
                    throw StoreError.invalid("unknown group \"\(group)\"")
                }
                after.group = group
            }
            if after.username != before.username {
                try AccountLookup.claimUsername(after.username, userID: id, replacing: before.username, on: connection)
            }
            let rows = try connection.query(
                """
                UPDATE users SET username = $2, display_name = $3, email = $4, "group" = $5, updated_at = now()
                WHERE id = $1
                RETURNING \(Self.columns)
                """, [id, after.username, after.displayName, after.email, after.group])
            try ChangeNotice.send([ChangeNotice.user(id)], on: connection)
            var updated = try PostgresUserRepository.decode(rows[0])
            if let quota = changes.quota, quota != before.quota {
                updated = try Self.adjust(
                    id: id, by: try Self.difference(to: quota, from: before.quota),
                    reason: "balance set to \(quota) by \(actor.name)",
                    on: connection, actor: actor)
            }
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "user.update", target: "user:\(id)",
                before: Self.auditFields(before), after: Self.auditFields(updated))
            return updated
        }
    }

    /// new-api's `POST /api/user/manage`. Returns the user after the change.
    public func manage(id: Int64, _ action: ManageAction, actorRole: Role?, by actor: Actor) async throws -> User {
        if case .addQuota(let mode, let value) = action {
            guard mode == .override ? value >= 0 : value > 0 else {
                throw StoreError.invalid(
                    mode == .override ? "value cannot be negative" : "value must be a positive number of quota units")
            }
            guard value <= QuotaLimits.maximum else {
                throw StoreError.invalid("value exceeds the maximum of \(QuotaLimits.maximum) units")
            }
        }
        return try await pool.transaction { connection in
            let before = try Self.lock(id: id, on: connection)
            guard Role.canManage(actor: actorRole, target: before.role) else {
                throw PermissionDenied(reason: "cannot manage a user whose role is equal to or above your own")
            }
            var status = before.status
            var role = before.role
            let name: String
            switch action {
            case .enable:
                name = "enable"
                status = .enabled
            case .disable:
                name = "disable"
                guard before.role != .root else { throw StoreError.invalid("the root user cannot be disabled") }
                status = .disabled
            case .promote:
                name = "promote"
                guard actorRole == nil || actorRole == .root else {
                    throw PermissionDenied(reason: "only root may promote users to admin")
                }
                guard before.role < .admin else { throw StoreError.invalid("user \(id) is already an admin") }
                role = .admin
            case .demote:
                name = "demote"
                guard before.role != .root else { throw StoreError.invalid("the root user cannot be demoted") }
                guard before.role != .user else { throw StoreError.invalid("user \(id) is already a common user") }
                role = .user
            case .addQuota(let mode, let value):
                let delta: Int64 =
                    switch mode {
                    case .add: value
                    case .subtract: -value
                    case .override: try Self.difference(to: value, from: before.quota)
                    }
                var updated = before
                try Self.checkCredit(delta, to: before)
                if delta != 0 {
                    updated = try Self.adjust(
                        id: id, by: delta, reason: "add_quota \(mode.rawValue) \(value) by \(actor.name)",
                        on: connection, actor: actor)
                }
                if delta < 0 {
                    // Instances holding units of the account leased give them back: a lowered
                    // balance must not be spent from leases taken out of the higher one.
                    try ChangeNotice.send([ChangeNotice.user(id)], on: connection)
                }
                try AuditLog.recordChange(
                    on: connection, actor: actor, action: "user.quota_\(mode.rawValue)", target: "user:\(id)",
                    before: ["quota": before.quota], after: ["quota": updated.quota, "value": value])
                return updated
            }
            let rows = try connection.query(
                """
                UPDATE users SET status = $2, role = $3, updated_at = now() WHERE id = $1
                RETURNING \(Self.columns)
                """, [id, status, role.rawValue])
            try ChangeNotice.send([ChangeNotice.user(id)], on: connection)
            let updated = try PostgresUserRepository.decode(rows[0])
            if before.status == .enabled && updated.status != .enabled {
                try WebhookOutbox.enqueueUserSuspended(updated, by: actor, on: connection)
            }
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "user.\(name)", target: "user:\(id)",
                before: ["status": before.status.rawValue, "role": before.role.rawValue],
                after: ["status": updated.status.rawValue, "role": updated.role.rawValue])
            return updated
        }
    }

    /// Issues a new system access token for `id`, replacing the old one (which stops working).
    public func rotateAccessToken(id: Int64, by actor: Actor) async throws -> String {
        let token = Secrets.newAccessToken()
        let hash = SecretHash(of: token)
        try await pool.transaction { connection in
            // The old hash read under the row's lock, in its own statement: a self-join in the
            // UPDATE read it from the statement's snapshot, so of two rotations at once the second
            // replaced the lookup row of the token the first had already replaced, and the
            // first's new token kept its lookup row for good.
            let rows = try connection.query(
                "SELECT encode(access_token_hash, 'hex') FROM users WHERE id = $1 FOR UPDATE", [id])
            guard let row = rows.first else { throw StoreError.notFound("user \(id) not found") }
            let old = try row.decodeOptional(0, as: String.self).flatMap(SecretHash.init(hex:))
            try connection.query(
                """
                UPDATE users SET access_token_hash = $2, access_token_last6 = $3, updated_at = now() WHERE id = $1
                """, [id, hash, Secrets.last6(token)])
            try AccountLookup.setAccessToken(hash, userID: id, replacing: old, on: connection)
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "user.access_token", target: "user:\(id)",
                before: nil, after: ["access_token_last6": Secrets.last6(token)])
        }
        return token
    }

    // MARK: Helpers

    /// Locks the user's row and reads it. Read after the lock, in a statement of its own: a
    /// fold that committed while the lock was awaited is then in both the row and what is
    /// still pending, so the balance is exact.
    static func lock(id: Int64, on connection: PostgresConnection) throws -> User {
        guard try connection.query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", [id]).count == 1,
            let row = try connection.query(
                "SELECT \(PostgresUserRepository.columns(account: "$1")) FROM users WHERE id = $1", [id]
            ).first
        else {
            throw StoreError.notFound("user \(id) not found")
        }
        return try PostgresUserRepository.decode(row)
    }

    /// Refuses a credit of `amount` that would take `user`'s (locked) balance past
    /// `QuotaLimits.maximum`: each credit is bounded, and without this a few thousand maximal ones
    /// overflowed the column, answered as an internal error.
    static func checkCredit(_ amount: Int64, to user: User) throws {
        let (after, overflow) = user.quota.addingReportingOverflow(amount)
        guard amount <= 0 || (!overflow && after <= QuotaLimits.maximum) else {
            throw StoreError.invalid(
                "the balance would exceed the maximum of \(QuotaLimits.maximum) units (it is \(user.quota))")
        }
        // Lowered as far as `PUT /api/user` may set it, no further: past it, repeated subtracts
        // ran into PostgreSQL's bigint (a 500), and then the next override's difference
        // overflowed in Swift and stopped the process.
        guard amount >= 0 || (!overflow && after >= -QuotaLimits.maximum) else {
            throw StoreError.invalid(
                "the balance would fall below the minimum of \(-QuotaLimits.maximum) units (it is \(user.quota))")
        }
    }

    /// The change that sets a balance of `from` to `to`, refused where it does not fit a bigint
    /// (a balance overdrawn past any adjustment's reach).
    static func difference(to value: Int64, from quota: Int64) throws -> Int64 {
        let (delta, overflow) = value.subtractingReportingOverflow(quota)
        guard !overflow else {
            throw StoreError.invalid("the balance \(quota) cannot be set to \(value) in one adjustment")
        }
        return delta
    }

    /// Folds the pending charges of a user whose row the caller has locked, before its balance
    /// changes otherwise: folded after a credit, they were announced from a balance that never
    /// was (the credit's), so balance.low went out for an account a top-up left no lower than it
    /// was, and `previous_quota` was wrong.
    static func foldPending(of id: Int64, on connection: PostgresConnection) throws {
        try connection.query(foldOne, [id])
    }

    private static let foldOne = PreparedStatement("accounts_fold_one", "SELECT tally_fold(ARRAY[$1::bigint], false)")

    /// Changes a balance by `delta` and writes the `adjust` ledger row, on the caller's transaction.
    static func adjust(id: Int64, by delta: Int64, reason: String, on connection: PostgresConnection, actor: Actor)
        throws -> User
    {
        try foldPending(of: id, on: connection)
        let rows = try connection.query(
            """
            UPDATE users SET quota = quota + $2, updated_at = now() WHERE id = $1
            RETURNING \(columns)
            """, [id, delta])
        let user = try PostgresUserRepository.decode(rows[0])
        try connection.query(
            """
            INSERT INTO ledger (user_id, kind, amount, reason, tid, balance_after) VALUES ($1, 'adjust', $2, $3, $4, $5)
            """, [id, delta, reason, actor.tid, user.quota])
        return user
    }

    static func auditFields(_ user: User) -> [String: any CustomStringConvertible] {
        [
            "username": user.username, "display_name": user.displayName, "email": user.email, "group": user.group,
            "quota": user.quota, "role": user.role.rawValue, "status": user.status.rawValue,
        ]
    }

    static func escapeLike(_ text: String) -> String {
        var escaped = ""
        for character in text {
            if character == "%" || character == "_" || character == "\\" { escaped.append("\\") }
            escaped.append(character)
        }
        return escaped
    }
}
