import Foundation
import TallyCore
import TallyPostgres

/// The answer to a top-up, identical for the first call and every replay of its key.
public struct TopUpResult: Sendable, Equatable {
    /// The ledger row of the credit.
    public var id: Int64
    public var userID: Int64
    public var amount: Int64
    public var reason: String
    /// As the caller gave it (without the ledger's `topup:` namespace).
    public var idempotencyKey: String?
    /// The balance right after this credit.
    public var quota: Int64
    public var createdTime: Int64
    /// True when this answer is a replay: nothing was credited by this call.
    public var replayed: Bool
}

/// A redemption code as admins list it; the code itself is never stored, only its last 6.
public struct Redemption: Sendable, Equatable {
    public var id: Int64
    public var createdBy: Int64?
    public var codeLast6: String
    public var status: RedemptionStatus
    public var name: String
    public var quota: Int64
    public var createdTime: Int64
    /// 0 = not redeemed.
    public var redeemedTime: Int64
    /// 0 = not redeemed.
    public var usedUserID: Int64
    /// 0 = never expires.
    public var expiredTime: Int64
}

/// Why a redemption failed; the controller turns each into a clear answer.
public enum RedeemFailure: Error, Sendable, Equatable {
    case unknownCode, alreadyUsed, disabled, expired
}

/// Credits: admin top-ups (idempotent), redemption codes (single use).
public struct BalanceRepository: Sendable {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    public static let maximumReasonLength = 500
    public static let maximumIdempotencyKeyLength = 200

    /// Credits `amount` units to `userID`. With an idempotency key, a replay (same key) credits
    /// nothing and answers the first result; the same key for a different user or amount is a
    /// conflict. The credit, its ledger row and its audit row are one transaction. An actor's role
    /// (nil: the CLI) may credit only users it manages, as `add_quota` (an admin not itself).
    public func topUp(
        userID: Int64, amount: Int64, reason: String, idempotencyKey: String?, actorRole: Role? = nil, by actor: Actor
    ) async throws -> TopUpResult {
        guard amount > 0 else {
            throw StoreError.invalid("amount must be a positive number of quota units, got \(amount)")
        }
        guard amount <= QuotaLimits.maximum else {
            throw StoreError.invalid("amount exceeds the maximum of \(QuotaLimits.maximum) units per top-up")
        }
        guard reason.count <= Self.maximumReasonLength else {
            throw StoreError.invalid("reason is longer than \(Self.maximumReasonLength) characters")
        }
        try TextRules.check(reason, field: "reason", multiline: true)
        if let idempotencyKey {
            guard !idempotencyKey.isEmpty, idempotencyKey.count <= Self.maximumIdempotencyKeyLength,
                idempotencyKey.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7f })
            else {
                throw StoreError.invalid(
                    "idempotency_key must be 1–\(Self.maximumIdempotencyKeyLength) printable characters without spaces")
            }
        }
        let ledgerKey = idempotencyKey.map { "topup:" + $0 }
        return try await pool.transaction { connection in
            let before = try AccountRepository.lock(id: userID, on: connection)
            guard Role.canManage(actor: actorRole, target: before.role) else {
                throw PermissionDenied(reason: "an admin may credit only users of lower roles")
            }
            if let ledgerKey {
                // The unique index holds per account (on Citus, per shard): top-ups of one key wait
                // for each other here, so a key used by another account is found, not used twice.
                try connection.query(Self.lockIdempotencyKey, [ledgerKey])
                if let replayed = try Self.replay(key: ledgerKey, userID: userID, amount: amount, on: connection) {
                    return replayed
                }
            }
            try AccountRepository.checkCredit(amount, to: before)
            let id = try connection.query(
                """
                INSERT INTO ledger (user_id, kind, amount, reason, idempotency_key, tid)
                VALUES ($1, 'topup', $2, $3, $4, $5) RETURNING id
                """, [userID, amount, reason, ledgerKey, actor.tid])[0].decode(0, as: Int64.self)
            try AccountRepository.foldPending(of: userID, on: connection)
            let balance = try connection.query(Self.credit, [userID, amount])[0].decode(0, as: Int64.self)
            let row = try connection.query(
                SQL.returning(
                    SQL.unix("at"),
                    from: "UPDATE ledger SET balance_after = $2 WHERE id = $1 AND user_id = $3"),
                [id, balance, userID])[0]
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "user.topup", target: "user:\(userID)",
                before: ["quota": before.quota],
                after: [
                    "quota": balance, "amount": amount, "reason": reason,
                    "idempotency_key": idempotencyKey ?? "", "ledger_id": id,
                ])
            return TopUpResult(
                id: id, userID: userID, amount: amount, reason: reason, idempotencyKey: idempotencyKey,
                quota: balance, createdTime: try row.decode(0), replayed: false)
        }
    }

    /// Top-ups with the same idempotency key, whatever their account, one at a time.
    private static let lockIdempotencyKey = PreparedStatement(
        "balances_lock_idempotency_key",
        "SELECT pg_advisory_xact_lock(2047934483, hashtext($1))")  // 0x7A110013

    /// The first top-up with `key` (nil when there is none), or a conflict when it was not this one.
    private static func replay(
        key: String, userID: Int64, amount: Int64,
        on connection: PostgresConnection
    ) throws -> TopUpResult? {
        guard
            let row = try connection.query(
                """
                SELECT id, user_id, kind, amount, reason, balance_after, \(SQL.unix("at")) FROM ledger WHERE idempotency_key = $1
                """, [key]
            ).first
        else {
            return nil
        }
        let firstUser = try row.decode(1, as: Int64.self), firstAmount = try row.decode(3, as: Int64.self)
        guard try row.decode(2, as: String.self) == "topup", firstUser == userID, firstAmount == amount else {
            throw StoreError.conflict(
                "idempotency_key was already used for a different top-up (user \(firstUser), amount \(firstAmount))")
        }
        return TopUpResult(
            id: try row.decode(0), userID: firstUser, amount: firstAmount, reason: try row.decode(4),
            idempotencyKey: String(key.dropFirst("topup:".count)),
            quota: try row.decodeOptional(5) ?? 0, createdTime: try row.decode(6), replayed: true)
    }

    /// Redeems a code for `userID`: at most once, whatever the concurrency (one conditional
    /// UPDATE claims it). Returns the credited quota.
    public func redeem(code: String, userID: Int64, tid: String?) async throws -> Int64 {
        let code = code.trimmingCharacters(in: .whitespaces).lowercased()
        guard !code.isEmpty else { throw StoreError.invalid("key is required: the redemption code to redeem") }
        guard code.utf8.count <= 200 else { throw RedeemFailure.unknownCode }
        let hash = SecretHash(of: code)
        return try await pool.transaction { connection in
            guard
                let claimed = try connection.query(
                    """
                    UPDATE redemptions SET status = \(RedemptionStatus.used.sql), used_user_id = $2, redeemed_at = now()
                    WHERE code_hash = $1 AND status = \(RedemptionStatus.enabled.sql)
                      AND (expires_at IS NULL OR NOT \(SQL.expiryPassed("expires_at")))
                    RETURNING id, quota
                    """, [hash, userID]
                ).first
            else {
                throw try Self.failure(hash: hash, on: connection)
            }
            let id = try claimed.decode(0, as: Int64.self), quota = try claimed.decode(1, as: Int64.self)
            let redeemer = try AccountRepository.lock(id: userID, on: connection)
            // A code credits as its creator would: an admin's code only users of lower roles
            // (else an admin credits itself, or a peer, by redeeming its own codes). The
            // refusal rolls the claim back, so the code stays usable.
            let creatorRole = try connection.query(
                "SELECT u.role FROM redemptions r JOIN users u ON u.id = r.created_by WHERE r.id = $1", [id]
            ).first?.decode(0, as: Role.self)
            guard Role.canManage(actor: creatorRole, target: redeemer.role) else {
                throw PermissionDenied(reason: "a code made by an admin credits only users of lower roles")
            }
            try AccountRepository.checkCredit(quota, to: redeemer)
            try AccountRepository.foldPending(of: userID, on: connection)
            let balance = try connection.query(Self.credit, [userID, quota])[0].decode(0, as: Int64.self)
            try connection.query(
                """
                INSERT INTO ledger (user_id, kind, amount, reason, idempotency_key, tid, balance_after)
                VALUES ($1, 'redeem', $2, $3, $4, $5, $6)
                """, [userID, quota, "redemption code #\(id)", "redeem:\(id)", tid, balance])
            return quota
        }
    }

    /// Credits `$2` units to user `$1` (whose row the caller has locked); returns the balance
    /// after it, charges still pending included.
    private static let credit = PreparedStatement(
        "balances_credit",
        """
        UPDATE users SET quota = quota + $2, updated_at = now() WHERE id = $1
        RETURNING quota - \(SQL.pending("quota", user: "users.id"))
        """)

    private static func failure(hash: SecretHash, on connection: PostgresConnection) throws -> RedeemFailure {
        guard
            let row = try connection.query(
                "SELECT status, expires_at IS NOT NULL AND \(SQL.expiryPassed("expires_at")) FROM redemptions WHERE code_hash = $1",
                [hash]
            ).first
        else { return .unknownCode }
        switch try row.decode(0, as: RedemptionStatus.self) {
        case .used: return .alreadyUsed
        case .disabled: return .disabled
        case .enabled: return try row.decode(1, as: Bool.self) ? .expired : .unknownCode
        }
    }

    // MARK: Redemption codes

    /// Creates `count` single-use codes worth `quota` each; returns the codes, shown only now.
    public func createRedemptions(name: String, count: Int, quota: Int64, expiredTime: Int64, by actor: Actor)
        async throws -> [String]
    {
        let trimmed = name.trimmingCharacters(in: .whitespaces)
        guard (1...20).contains(trimmed.count) else { throw StoreError.invalid("name must be 1–20 characters") }
        try TextRules.check(trimmed, field: "name")
        guard count > 0 else { throw StoreError.invalid("count must be greater than 0") }
        guard count <= 100 else { throw StoreError.invalid("count cannot be greater than 100 in one batch") }
        guard quota > 0 else {
            throw StoreError.invalid("quota must be a positive number of quota units, got \(quota)")
        }
        try TokenRules.checkQuota(quota, field: "quota")
        let now = Int64(Date().timeIntervalSince1970)
        guard expiredTime == 0 || (expiredTime > now && expiredTime <= TokenRules.latestExpiry) else {
            throw StoreError.invalid(
                "expired_time must be 0 (never) or a unix time in seconds in the future, got \(expiredTime)")
        }
        let codes = (0..<count).map { _ in Secrets.newRedemptionCode() }
        try await pool.transaction { connection in
            var ids: [Int64] = []
            for code in codes {
                let row = try connection.query(
                    """
                    INSERT INTO redemptions (name, code_hash, code_last6, quota, created_by, expires_at)
                    VALUES ($1, $2, $3, $4, $5, CASE WHEN $6::bigint = 0 THEN NULL ELSE to_timestamp($6::bigint) END) RETURNING id
                    """, [trimmed, SecretHash(of: code), Secrets.last6(code), quota, actor.userID, expiredTime])
                ids.append(try row[0].decode(0))
            }
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "redemption.create",
                target: "redemption:\(ids.first ?? 0)-\(ids.last ?? 0)", before: nil,
                after: [
                    "name": trimmed, "count": count, "quota": quota, "expired_time": expiredTime,
                    "ids": ids.map(String.init).joined(separator: ","),
                ])
        }
        return codes
    }

    public func listRedemptions(page: PageRequest) async throws -> Page<Redemption> {
        try await pool.withConnection { connection in
            let total = try connection.query("SELECT count(*) FROM redemptions")[0].decode(0, as: Int.self)
            let rows = try connection.query(
                "SELECT \(Self.redemptionColumns) FROM redemptions ORDER BY id DESC LIMIT $1 OFFSET $2",
                [page.size, page.offset])
            return Page(items: try rows.map(Self.redemption), total: total, request: page)
        }
    }

    /// Disables an unused code (a leaked batch is stopped) or enables it again; a used code
    /// cannot change. The actor must be, or manage (``Role/canManage(actor:target:)``), the
    /// code's maker, and to enable it also whoever changed its status last (a code made, or last
    /// changed, at the command line counts as root's): else an admin could enable again the
    /// batch root stopped, its own included. Audited as `redemption.disable` / `redemption.enable`.
    public func setRedemptionStatus(id: Int64, enabled: Bool, by actor: Actor) async throws -> Redemption {
        let status: RedemptionStatus = enabled ? .enabled : .disabled
        return try await pool.transaction { connection in
            guard
                let code = try connection.query(
                    "SELECT status, created_by FROM redemptions WHERE id = $1 FOR UPDATE", [id]
                ).first
            else { throw StoreError.notFound("redemption code \(id) not found") }
            let before = try code.decode(0, as: RedemptionStatus.self)
            if let actorID = actor.userID {
                var owners: [Int64?] = [try code.decodeOptional(1)]
                if enabled, let lastChange = try connection.query(Self.lastStatusChange, ["redemption:\(id)"]).first {
                    owners.append(try lastChange.decodeOptional(0))
                }
                try Self.checkManages(owners.filter { $0 != actorID }, actorID: actorID, code: id, on: connection)
            }
            guard before != .used else {
                throw StoreError.conflict("redemption code \(id) was used; it can no longer be enabled or disabled")
            }
            // Read back apart: Citus refuses the columns' STABLE functions in a RETURNING clause.
            try connection.query("UPDATE redemptions SET status = $2 WHERE id = $1", [id, status.rawValue])
            let row = try connection.query("SELECT \(Self.redemptionColumns) FROM redemptions WHERE id = $1", [id])[0]
            try AuditLog.recordChange(
                on: connection, actor: actor, action: enabled ? "redemption.enable" : "redemption.disable",
                target: "redemption:\(id)", before: ["status": before.rawValue], after: ["status": status.rawValue])
            return try Self.redemption(row)
        }
    }

    /// The user who last enabled or disabled a code (NULL: the command line).
    private static let lastStatusChange = """
        SELECT actor_id FROM audit_log
        WHERE target = $1 AND action IN ('redemption.disable', 'redemption.enable')
        ORDER BY at DESC, id DESC LIMIT 1
        """

    /// Refuses unless the actor manages every one of `owners` (nil: the command line, as root).
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    private static func checkManages(
        _ owners: [Int64?], actorID: Int64, code id: Int64, on connection: PostgresConnection
    )
        throws
    {
        func role(_ user: Int64) throws -> Role? {
            try connection.query("SELECT role FROM users WHERE id = $1", [user]).first?.decode(0, as: Role.self)
        }
        let actorRole = try role(actorID) ?? .user
        for owner in owners {
            guard Role.canManage(actor: actorRole, target: try owner.flatMap(role) ?? .root) else {
                throw PermissionDenied(
                    reason: "redemption code \(id) was made or last changed by a user of your role or above: "
                        + "only they or root may change it")
            }
        }
    }

    private static let redemptionColumns = """
        id, created_by, code_last6, status, name, quota, \(SQL.unix("created_at")),
        coalesce(\(SQL.unix("redeemed_at")), 0), coalesce(used_user_id, 0), coalesce(\(SQL.unix("expires_at")), 0)
        """

    private static func redemption(_ row: PostgresRow) throws -> Redemption {
        Redemption(
            id: try row.decode(0), createdBy: try row.decodeOptional(1), codeLast6: try row.decode(2),
            status: try row.decode(3), name: try row.decode(4), quota: try row.decode(5),
            createdTime: try row.decode(6), redeemedTime: try row.decode(7), usedUserID: try row.decode(8),
            expiredTime: try row.decode(9))
    }
}
