import Foundation
import TallyCore
import TallyPostgres

/// A row of the group table. Ratios live in the price sheet; this is who may pick the group
/// and its rate limits.
public struct AccountGroup: Sendable, Equatable {
    public var name: String
    public var description: String
    /// Users may pick it for their own keys.
    public var selectable: Bool
    /// Requests per minute per key (a key's own limit comes first); nil = no limit.
    public var rpmLimit: Int?
    /// Requests per minute per user and model; nil = no limit.
    public var modelRPMLimit: Int?
    public var createdTime: Int64
    public var updatedTime: Int64
}

/// A change to a group; nil fields keep their value (`rpmLimit: .some(nil)` removes the limit).
public struct GroupChanges: Sendable, Equatable {
    public var description: String?
    public var selectable: Bool?
    public var rpmLimit: Int??
    public var modelRPMLimit: Int??

    public init(
        description: String? = nil, selectable: Bool? = nil, rpmLimit: Int?? = nil, modelRPMLimit: Int?? = nil
    ) {
        self.description = description
        self.selectable = selectable
        self.rpmLimit = rpmLimit
        self.modelRPMLimit = modelRPMLimit
    }
}

/// The `groups` table.
public struct GroupRepository: Sendable {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    static let columns =
        "name, description, selectable, rpm_limit, model_rpm_limit, \(SQL.unix("created_at")), \(SQL.unix("updated_at"))"

    static func decode(_ row: PostgresRow) throws -> AccountGroup {
        AccountGroup(
            name: try row.decode(0), description: try row.decode(1), selectable: try row.decode(2),
            rpmLimit: try row.decodeOptional(3), modelRPMLimit: try row.decodeOptional(4),
            createdTime: try row.decode(5), updatedTime: try row.decode(6))
    }

    /// Every group, by name.
    public func all() async throws -> [AccountGroup] {
        try await pool.withConnection { connection in
            try connection.query("SELECT \(Self.columns) FROM groups ORDER BY name").map(Self.decode)
        }
    }

    /// The groups a user may give a key: the selectable ones and the user's own.
    public func usable(by user: User) async throws -> [AccountGroup] {
        try await pool.withConnection { connection in
            try connection.query(
                "SELECT \(Self.columns) FROM groups WHERE selectable OR name = $1 ORDER BY name",
                [user.group]
            ).map(Self.decode)
        }
    }

    public func get(name: String) async throws -> AccountGroup {
        try await pool.withConnection { connection in
            guard let row = try connection.query("SELECT \(Self.columns) FROM groups WHERE name = $1", [name]).first
            else {
                throw StoreError.notFound("group \"\(name.prefix(64))\" not found")
            }
            return try Self.decode(row)
        }
    }

    public func create(
        name: String, description: String = "", selectable: Bool = true, rpmLimit: Int? = nil,
        modelRPMLimit: Int? = nil, by actor: Actor
    ) async throws -> AccountGroup {
        try GroupRules.checkName(name)
        try GroupRules.checkDescription(description)
        try GroupRules.checkRPM(rpmLimit)
        try GroupRules.checkRPM(modelRPMLimit, field: "model_rpm_limit")
        return try await pool.transaction { connection in
            let rows: PostgresRows
            do {
                rows = try connection.query(
                    SQL.returning(
                        Self.columns,
                        from: """
                            INSERT INTO groups (name, description, selectable, rpm_limit, model_rpm_limit)
                            VALUES ($1, $2, $3, $4, $5)
                            """), [name, description, selectable, rpmLimit, modelRPMLimit])
            } catch let error as PostgresError where error.isUniqueViolation {
                throw StoreError.conflict("group \"\(name)\" already exists")
            }
            let group = try Self.decode(rows[0])
            try ChangeNotice.send([ChangeNotice.group(name)], on: connection)
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "group.create", target: "group:\(name)",
                before: nil, after: Self.auditFields(group))
            return group
        }
    }

    public func update(name: String, _ changes: GroupChanges, by actor: Actor) async throws -> AccountGroup {
        if let description = changes.description { try GroupRules.checkDescription(description) }
        if let rpm = changes.rpmLimit { try GroupRules.checkRPM(rpm) }
        if let rpm = changes.modelRPMLimit { try GroupRules.checkRPM(rpm, field: "model_rpm_limit") }
        return try await pool.transaction { connection in
            guard
                let row = try connection.query("SELECT \(Self.columns) FROM groups WHERE name = $1 FOR UPDATE", [name])
                    .first
            else {
                throw StoreError.notFound("group \"\(name.prefix(64))\" not found")
            }
            let before = try Self.decode(row)
            var after = before
            if let description = changes.description { after.description = description }
            if let selectable = changes.selectable { after.selectable = selectable }
            if let rpm = changes.rpmLimit { after.rpmLimit = rpm }
            if let rpm = changes.modelRPMLimit { after.modelRPMLimit = rpm }
            let rows = try connection.query(
                SQL.returning(
                    Self.columns,
                    from: """
                        UPDATE groups SET description = $2, selectable = $3, rpm_limit = $4, model_rpm_limit = $5,
                                          updated_at = now()
                        WHERE name = $1
                        """), [name, after.description, after.selectable, after.rpmLimit, after.modelRPMLimit])
            let updated = try Self.decode(rows[0])
            try ChangeNotice.send([ChangeNotice.group(name)], on: connection)
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "group.update", target: "group:\(name)",
                before: Self.auditFields(before), after: Self.auditFields(updated))
            return updated
        }
    }

    /// Deletes a group nobody uses: no user, key or channel may name it.
    public func delete(name: String, by actor: Actor) async throws {
        try await pool.transaction { connection in
            try CitusLayout.readAllShardsBeforeWritingReferenceTables(on: connection)
            guard
                let row = try connection.query("SELECT \(Self.columns) FROM groups WHERE name = $1 FOR UPDATE", [name])
                    .first
            else {
                throw StoreError.notFound("group \"\(name.prefix(64))\" not found")
            }
            let before = try Self.decode(row)
            let uses = try connection.query(
                """
                SELECT (SELECT count(*) FROM users WHERE "group" = $1),
                       (SELECT count(*) FROM tokens WHERE "group" = $1 AND deleted_at IS NULL),
                       (SELECT count(*) FROM channels WHERE $1 = ANY (groups))
                """, [name])[0]
            let users = try uses.decode(0, as: Int.self), tokens = try uses.decode(1, as: Int.self)
            let channels = try uses.decode(2, as: Int.self)
            guard users + tokens + channels == 0 else {
                throw StoreError.conflict(
                    "group \"\(name)\" is in use by \(users) user(s), \(tokens) API key(s) and \(channels) channel(s)")
            }
            try connection.query("DELETE FROM groups WHERE name = $1", [name])
            try ChangeNotice.send([ChangeNotice.group(name)], on: connection)
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "group.delete", target: "group:\(name)",
                before: Self.auditFields(before), after: nil)
        }
    }

    static func auditFields(_ group: AccountGroup) -> [String: any CustomStringConvertible] {
        [
            "description": group.description, "selectable": group.selectable,
            "rpm_limit": group.rpmLimit.map(String.init) ?? "null",
            "model_rpm_limit": group.modelRPMLimit.map(String.init) ?? "null",
        ]
    }
}
