import Foundation
import TallyCore
import TallyPostgres

/// An API key as the System API shows it (new-api's `Token`). The key itself is never stored:
/// only its SHA-256 and its last six characters.
public struct APIToken: Sendable, Equatable {
    public var id: Int64
    public var userID: Int64
    public var name: String
    public var keyLast6: String
    /// An enabled key past its expiry reads `expired`, an enabled limited key with no quota
    /// left reads `exhausted`, as new-api reports them.
    public var status: TokenStatus
    public var createdTime: Int64
    public var accessedTime: Int64
    /// Unix seconds; -1 = never.
    public var expiredTime: Int64
    public var remainQuota: Int64
    public var unlimitedQuota: Bool
    public var usedQuota: Int64
    public var requestCount: Int64
    public var modelLimitsEnabled: Bool
    /// Comma-separated model names.
    public var modelLimits: String
    /// Canonical CIDRs, newline-separated ("" = any address).
    public var allowIPs: String
    /// "" = the owner's group.
    public var group: String

    /// True when the key may be used now: enabled, not expired, not exhausted.
    public var isUsable: Bool { status == .enabled }

    /// The model limit list (empty when limits are off).
    public var modelLimitList: [String] {
        modelLimits.split(separator: ",").map(String.init)
    }
}

/// What a new key is made from; every field has new-api's default.
public struct TokenDraft: Sendable, Equatable {
    public var name: String
    /// -1 = never, else unix seconds in the future.
    public var expiredTime: Int64
    public var remainQuota: Int64
    public var unlimitedQuota: Bool
    public var modelLimitsEnabled: Bool
    public var modelLimits: String
    public var allowIPs: String
    public var group: String
    /// Requests per minute for this key, before its group's; nil = the group's. Not in new-api's
    /// token routes: set by `tally admin create-key --rpm-limit`.
    public var rpmLimit: Int?

    public init(
        name: String = "", expiredTime: Int64 = -1, remainQuota: Int64 = 0, unlimitedQuota: Bool = false,
        modelLimitsEnabled: Bool = false, modelLimits: String = "", allowIPs: String = "", group: String = "",
        rpmLimit: Int? = nil
    ) {
        self.name = name
        self.expiredTime = expiredTime
        self.remainQuota = remainQuota
        self.unlimitedQuota = unlimitedQuota
        self.modelLimitsEnabled = modelLimitsEnabled
        self.modelLimits = modelLimits
        self.allowIPs = allowIPs
        self.group = group
        self.rpmLimit = rpmLimit
    }
}

/// A change to a key; nil fields keep their value.
public struct TokenChanges: Sendable, Equatable {
    public var name: String?
    public var expiredTime: Int64?
    public var remainQuota: Int64?
    public var unlimitedQuota: Bool?
    public var modelLimitsEnabled: Bool?
    public var modelLimits: String?
    public var allowIPs: String?
    public var group: String?
    /// `enabled` or `disabled`; a full update ignores the displayed `expired` or `exhausted`.
    public var status: TokenStatus?

    public init(
        name: String? = nil, expiredTime: Int64? = nil, remainQuota: Int64? = nil, unlimitedQuota: Bool? = nil,
        modelLimitsEnabled: Bool? = nil, modelLimits: String? = nil, allowIPs: String? = nil,
        group: String? = nil, status: TokenStatus? = nil
    ) {
        self.name = name
        self.expiredTime = expiredTime
        self.remainQuota = remainQuota
        self.unlimitedQuota = unlimitedQuota
        self.modelLimitsEnabled = modelLimitsEnabled
        self.modelLimits = modelLimits
        self.allowIPs = allowIPs
        self.group = group
        self.status = status
    }
}

/// API keys (`tokens`).
public struct TokenRepository: Sendable {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    /// Use figures are exact at every instant: what the key's uses charged and the fold has not
    /// taken off `remain_quota` yet (migration 0010) is included; unlimited keys keep their
    /// remain_quota. A statement that waits for the row's lock reads them only after the lock.
    static let columns = columns(account: nil)

    /// The columns of a statement that reads keys of the one account in parameter `account`
    /// (`"$1"`): single-shard on Citus (``SQL/pending(_:user:token:account:)``).
    static func columns(account: String?) -> String {
        func pending(_ column: String) -> String {
            SQL.pending(column, user: "t.user_id", token: "t.id", account: account)
        }
        let remainQuota = "t.remain_quota - CASE WHEN t.unlimited_quota THEN 0 ELSE \(pending("quota")) END"
        let effectiveStatus = """
            CASE WHEN t.status = \(TokenStatus.enabled.sql) AND t.expires_at IS NOT NULL AND \(SQL.expiryPassed("t.expires_at")) \
            THEN \(TokenStatus.expired.sql) \
            WHEN t.status = \(TokenStatus.enabled.sql) AND NOT t.unlimited_quota AND \(remainQuota) <= 0 \
            THEN \(TokenStatus.exhausted.sql) ELSE t.status END
            """
        return """
            t.id, t.user_id, t.name, t.key_last6, \(effectiveStatus), \(SQL.unix("t.created_at")), \
            \(SQL.unix("t.accessed_at")), coalesce(\(SQL.unix("t.expires_at")), -1), \(remainQuota), \
            t.unlimited_quota, \
            t.used_quota + \(pending("quota")), t.request_count + \(pending("requests")), \
            t.model_limits_enabled, t.model_limits, \
            t.allow_ips, t."group"
            """
    }

    static func decode(_ row: PostgresRow) throws -> APIToken {
        APIToken(
            id: try row.decode(0), userID: try row.decode(1), name: try row.decode(2), keyLast6: try row.decode(3),
            status: try row.decode(4), createdTime: try row.decode(5), accessedTime: try row.decode(6),
            expiredTime: try row.decode(7), remainQuota: try row.decode(8), unlimitedQuota: try row.decode(9),
            usedQuota: try row.decode(10), requestCount: try row.decode(11), modelLimitsEnabled: try row.decode(12),
            modelLimits: try row.decode(13), allowIPs: try row.decode(14), group: try row.decode(15))
    }

    /// Creates a key for `userID`; returns it with the full key, which exists only in this answer.
    /// A key's group is a selectable one or its owner's own: authorize refuses any other
    /// (`insufficient_permissions`, as new-api does), so no route makes one, the CLI included.
    public func create(userID: Int64, _ draft: TokenDraft, by actor: Actor? = nil) async throws
        -> (token: APIToken, key: String)
    {
        var draft = draft
        let now = Int64(Date().timeIntervalSince1970)
        try TokenRules.checkName(draft.name)
        try TokenRules.checkExpiry(draft.expiredTime, now: now)
        try TokenRules.checkQuota(draft.remainQuota, unlimited: draft.unlimitedQuota)
        try TokenRules.checkGroupName(draft.group)
        try GroupRules.checkRPM(draft.rpmLimit)
        draft.modelLimits = try TokenRules.normalizedModelLimits(draft.modelLimits)
        draft.allowIPs = try TokenRules.normalizedAllowIPs(draft.allowIPs)
        let key = Secrets.newAPIKey()
        let hash = SecretHash(of: key)
        let draftValue = draft
        let token = try await pool.transaction { connection -> APIToken in
            let owner = try connection.query(#"SELECT "group" FROM users WHERE id = $1 FOR UPDATE"#, [userID])
            guard let ownGroup = try owner.first?.decode(0, as: String.self) else {
                throw StoreError.notFound("user \(userID) does not exist")
            }
            try Self.checkGroupAllowed(draftValue.group, ownGroup: ownGroup, on: connection)
            let count = try connection.query(
                "SELECT count(*) FROM tokens WHERE user_id = $1 AND deleted_at IS NULL", [userID])
            guard try count[0].decode(0, as: Int.self) < TokenRules.maximumTokensPerUser else {
                throw StoreError.conflict(
                    "this account already has the maximum of \(TokenRules.maximumTokensPerUser) API keys; delete one first"
                )
            }
            let inserted = try connection.query(
                """
                INSERT INTO tokens (user_id, name, key_hash, key_last6, "group", remain_quota, unlimited_quota,
                                    model_limits_enabled, model_limits, allow_ips, expires_at, rpm_limit)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, CASE WHEN $11::bigint = -1 THEN NULL ELSE to_timestamp($11::bigint) END, $12)
                RETURNING id
                """,
                [
                    userID, draftValue.name, hash, Secrets.last6(key), draftValue.group, draftValue.remainQuota,
                    draftValue.unlimitedQuota, draftValue.modelLimitsEnabled, draftValue.modelLimits,
                    draftValue.allowIPs, draftValue.expiredTime, draftValue.rpmLimit,
                ])
            let token = try Self.reread(id: try inserted[0].decode(0), userID: userID, on: connection)
            try AccountLookup.addKey(hash, userID: userID, tokenID: token.id, on: connection)
            if let actor {
                try AuditLog.recordChange(
                    on: connection, actor: actor, action: "token.create", target: "token:\(token.id)",
                    before: nil, after: Self.auditFields(token))
            }
            return token
        }
        return (token, key)
    }

    /// The caller's keys, newest first.
    /// The user's keys, newest first; with `nameContains`, those whose name contains it; with
    /// `keyEnding`, those whose key ends with it (only the last 6 characters are kept, so at
    /// most 6 are compared, or the whole key through its hash).
    public func list(userID: Int64, page: PageRequest, nameContains: String? = nil, keyEnding: String? = nil)
        async throws -> Page<APIToken>
    {
        var conditions = "t.user_id = $1 AND t.deleted_at IS NULL"
        var parameters: [any PostgresEncodable] = [userID]
        if let nameContains, !nameContains.isEmpty {
            parameters.append("%" + AccountRepository.escapeLike(nameContains) + "%")
            conditions += " AND t.name LIKE $\(parameters.count)"
        }
        if let keyEnding, !keyEnding.isEmpty {
            let fragment = keyEnding.hasPrefix("sk-") ? String(keyEnding.dropFirst(3)) : keyEnding
            if fragment.count > 6 {
                parameters.append(SecretHash(of: "sk-" + fragment))
                conditions += " AND t.key_hash = $\(parameters.count)"
            } else {
                parameters.append("%" + AccountRepository.escapeLike(fragment))
                conditions += " AND t.key_last6 LIKE $\(parameters.count)"
            }
        }
        let filter = conditions, filterParameters = parameters
        return try await pool.withConnection { connection in
            let total = try connection.query("SELECT count(*) FROM tokens t WHERE \(filter)", filterParameters)[0]
                .decode(0, as: Int.self)
            let rows = try connection.query(
                """
                SELECT \(Self.columns(account: "$1")) FROM tokens t WHERE \(filter)
                ORDER BY t.id DESC LIMIT \(page.size) OFFSET \(page.offset)
                """, filterParameters)
            return Page(items: try rows.map(Self.decode), total: total, request: page)
        }
    }

    /// One of the caller's keys; not found when it is someone else's or deleted.
    public func get(id: Int64, userID: Int64) async throws -> APIToken {
        try await pool.withConnection { connection in
            guard
                let row = try connection.query(
                    """
                    SELECT \(Self.columns(account: "$2")) FROM tokens t WHERE t.id = $1 AND t.user_id = $2
                      AND t.deleted_at IS NULL
                    """,
                    [id, userID]
                ).first
            else { throw StoreError.notFound("API key \(id) not found") }
            return try Self.decode(row)
        }
    }

    /// Applies `changes` to one of the caller's keys. With `statusOnly`, only the status changes
    /// (new-api's `?status_only=1`).
    public func update(id: Int64, userID: Int64, _ changes: TokenChanges, statusOnly: Bool = false) async throws
        -> APIToken
    {
        let now = Int64(Date().timeIntervalSince1970)
        var changes = changes
        if let status = changes.status, !status.isSettable {
            // A full update may echo the displayed status back (expired, exhausted): those are
            // states, not requests, and are ignored as new-api ignores status in a full update.
            guard !statusOnly else { throw TokenStatus.refusal(status.rawValue) }
            changes.status = nil
        }
        if statusOnly && changes.status == nil {
            throw StoreError.invalid("status is required with status_only")
        }
        if !statusOnly {
            if let name = changes.name { try TokenRules.checkName(name) }
            if let quota = changes.remainQuota {
                try TokenRules.checkQuota(quota, unlimited: changes.unlimitedQuota == true)
            }
            if let group = changes.group { try TokenRules.checkGroupName(group) }
        }
        if !statusOnly {
            changes.modelLimits = try changes.modelLimits.map(TokenRules.normalizedModelLimits)
            changes.allowIPs = try changes.allowIPs.map(TokenRules.normalizedAllowIPs)
        }
        let normalized = changes
        return try await pool.transaction { connection -> APIToken in
            guard
                try connection.query(
                    """
                    SELECT 1 FROM tokens WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL FOR UPDATE
                    """, [id, userID]
                ).count == 1,
                let row = try connection.query(
                    """
                    SELECT \(Self.columns(account: "$2")), t.status, u."group"
                    FROM tokens t JOIN users u ON u.id = t.user_id
                    WHERE t.id = $1 AND t.user_id = $2
                    """, [id, userID]
                ).first
            else { throw StoreError.notFound("API key \(id) not found") }
            let current = try Self.decode(row)
            let storedStatus = try row.decode(16, as: TokenStatus.self)
            let ownGroup = try row.decode(17, as: String.self)
            var next = current
            next.status = storedStatus
            if !statusOnly {
                if let name = normalized.name { next.name = name }
                if let expiry = normalized.expiredTime, expiry != current.expiredTime {
                    try TokenRules.checkExpiry(expiry, now: now)
                    next.expiredTime = expiry
                }
                if let quota = normalized.remainQuota { next.remainQuota = quota }
                if let unlimited = normalized.unlimitedQuota { next.unlimitedQuota = unlimited }
                if let enabled = normalized.modelLimitsEnabled { next.modelLimitsEnabled = enabled }
                if let limits = normalized.modelLimits { next.modelLimits = limits }
                if let ips = normalized.allowIPs { next.allowIPs = ips }
                if let group = normalized.group, group != current.group {
                    try Self.checkGroupAllowed(group, ownGroup: ownGroup, on: connection)
                    next.group = group
                }
            }
            if let status = normalized.status {
                if status == .enabled && current.status != .enabled {
                    if next.expiredTime != -1 && next.expiredTime <= now {
                        throw StoreError.invalid(
                            "Token has expired and cannot be enabled. Please modify the expiration time or set it to never expire"
                        )
                    }
                    if !next.unlimitedQuota && next.remainQuota <= 0 {
                        throw StoreError.invalid(
                            "Token quota has been exhausted and cannot be enabled. Please modify the remaining quota or set it to unlimited quota"
                        )
                    }
                }
                next.status = status
            }
            // remain_quota as shown is what the fold leaves once it has taken the pending charges,
            // so a new one is stored plus what is pending now. An edit that leaves it as it was
            // does not write it: batches charge the key without its lock, and rewriting it from the
            // figure read above would give back whatever they committed since.
            let quotaChanged =
                next.remainQuota != current.remainQuota || next.unlimitedQuota != current.unlimitedQuota
            try connection.query(
                """
                UPDATE tokens SET name = $3,
                    expires_at = CASE WHEN $4::bigint = -1 THEN NULL ELSE to_timestamp($4::bigint) END,
                    remain_quota = CASE WHEN NOT $12 THEN remain_quota
                        ELSE $5 + CASE WHEN $6 THEN 0 ELSE \(SQL.pending("quota", user: "tokens.user_id", token: "tokens.id")) END
                        END,
                    unlimited_quota = $6, model_limits_enabled = $7, model_limits = $8,
                    allow_ips = $9, "group" = $10, status = $11
                WHERE id = $1 AND user_id = $2
                """,
                [
                    id, userID, next.name, next.expiredTime, next.remainQuota, next.unlimitedQuota,
                    next.modelLimitsEnabled, next.modelLimits, next.allowIPs, next.group, next.status, quotaChanged,
                ])
            try ChangeNotice.send([ChangeNotice.token(id)], on: connection)
            return try Self.reread(id: id, userID: userID, on: connection)
        }
    }

    /// The key as the caller's transaction just wrote it. A second statement rather than
    /// `RETURNING`: the columns call now() and read pending_charges, which Citus allows in
    /// neither a RETURNING clause nor a query over the written rows (``SQL/pending(_:user:token:account:)``).
    private static func reread(id: Int64, userID: Int64, on connection: PostgresConnection) throws -> APIToken {
        try decode(
            connection.query(
                "SELECT \(columns(account: "$2")) FROM tokens t WHERE t.id = $1 AND t.user_id = $2",
                [id, userID])[0])
    }

    /// Deletes one of the caller's keys (soft delete: the ledger and logs keep their reference).
    public func delete(id: Int64, userID: Int64) async throws {
        guard try await delete(ids: [id], userID: userID) == 1 else {
            throw StoreError.notFound("API key \(id) not found")
        }
    }

    /// Deletes those of `ids` that are the user's keys and not deleted yet (soft delete, as
    /// one key's); returns how many.
    /// The rows are locked in id order first, the order the fold and the leases lock keys in
    /// (an UPDATE of several rows locks them in the order it finds them: a deadlock with those).
    public func delete(ids: [Int64], userID: Int64) async throws -> Int {
        try await pool.transaction { connection in
            let locked = try connection.query(
                "SELECT id FROM tokens WHERE user_id = $2 AND id = ANY ($1::bigint[]) AND deleted_at IS NULL "
                    + "ORDER BY id FOR NO KEY UPDATE",
                [PostgresArray.integers(ids), userID]
            ).map { try $0.decode(0, as: Int64.self) }
            guard !locked.isEmpty else { return 0 }
            let deleted = try connection.query(
                "UPDATE tokens SET deleted_at = now(), status = $3 WHERE user_id = $2 AND id = ANY ($1::bigint[]) "
                    + "RETURNING id",
                [PostgresArray.integers(locked), userID, TokenStatus.disabled]
            ).map { try $0.decode(0, as: Int64.self) }
            if !deleted.isEmpty { try ChangeNotice.send(deleted.map(ChangeNotice.token), on: connection) }
            return deleted.count
        }
    }

    /// The key and its owner for a full `sk-…` key, when the key exists and is not deleted
    /// (whatever its status: the caller decides what a disabled or expired key may do).
    public func find(key: String) async throws -> (token: APIToken, owner: User)? {
        let hash = SecretHash(of: key)
        return try await pool.withConnection { connection in
            guard let row = try connection.query(Self.byKeyHash, [hash]).first else { return nil }
            let token = try Self.decode(row)
            guard
                let owner = try connection.query(
                    "SELECT \(PostgresUserRepository.columns(account: "$1")) FROM users WHERE id = $1", [token.userID]
                ).first.map(PostgresUserRepository.decode)
            else { return nil }
            return (token, owner)
        }
    }

    private static let byKeyHash = PreparedStatement(
        "tokens_by_key_hash", "SELECT \(columns) FROM tokens t WHERE t.key_hash = $1 AND t.deleted_at IS NULL")

    /// A key may have only a selectable group or its owner's own.
    static func checkGroupAllowed(_ group: String, ownGroup: String, on connection: PostgresConnection) throws {
        guard !group.isEmpty, group != ownGroup else { return }
        // Locked (KEY SHARE) until the key is written: a group being deleted is waited for and
        // then found gone, and one deleted later finds the key (the deletion counts keys).
        guard
            let row = try connection.query("SELECT selectable FROM groups WHERE name = $1 FOR KEY SHARE", [group]).first
        else {
            throw StoreError.invalid("unknown group \"\(group)\"")
        }
        guard try row.decode(0, as: Bool.self) else {
            throw StoreError.invalid("group \"\(group)\" is not available to this account")
        }
    }

    static func auditFields(_ token: APIToken) -> [String: any CustomStringConvertible] {
        [
            "user_id": token.userID, "name": token.name, "key_last6": token.keyLast6, "group": token.group,
            "remain_quota": token.remainQuota, "unlimited_quota": token.unlimitedQuota,
            "expired_time": token.expiredTime, "model_limits": token.modelLimits, "allow_ips": token.allowIPs,
        ]
    }
}
