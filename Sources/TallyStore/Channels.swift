import Foundation
import TallyCore
import TallyPostgres

/// An upstream channel as Tally knows it: which groups it serves and which models it offers.
/// (The gateway holds its credentials; Tally needs only what decides availability.)
public struct Channel: Sendable, Equatable {
    public var id: Int64
    public var name: String
    public var status: ChannelStatus
    public var groups: [String]
    public var models: [String]
    public var usedQuota: Int64
    public var createdTime: Int64
    public var updatedTime: Int64
}

public struct ChannelDraft: Sendable, Equatable {
    public var name: String
    public var status: ChannelStatus
    public var groups: [String]
    public var models: [String]

    public init(name: String, status: ChannelStatus = .enabled, groups: [String] = ["default"], models: [String] = []) {
        self.name = name
        self.status = status
        self.groups = groups
        self.models = models
    }
}

public struct ChannelChanges: Sendable, Equatable {
    public var name: String?
    public var status: ChannelStatus?
    public var groups: [String]?
    public var models: [String]?

    public init(name: String? = nil, status: ChannelStatus? = nil, groups: [String]? = nil, models: [String]? = nil) {
        self.name = name
        self.status = status
        self.groups = groups
        self.models = models
    }
}

/// The `channels` table, and the models the enabled channels offer to groups.
public struct ChannelRepository: Sendable {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    static let columns =
        "id, name, status, groups, models, used_quota, \(SQL.unix("created_at")), \(SQL.unix("updated_at"))"

    static func decode(_ row: PostgresRow) throws -> Channel {
        Channel(
            id: try row.decode(0), name: try row.decode(1), status: try row.decode(2),
            groups: try row.decode(3, as: TextArray.self).elements,
            models: try row.decode(4, as: TextArray.self).elements,
            usedQuota: try row.decode(5), createdTime: try row.decode(6), updatedTime: try row.decode(7))
    }

    /// The channels with what batches charged them that the roll-up has not added to
    /// `used_quota` yet (migration 0038), read in the caller's snapshot (a repeatable-read one,
    /// or under the channel's row lock), so the figure is exact. A query of its own, since on
    /// Citus the pending rows stay on the coordinator and `channels` is a reference table.
    static func addingPending(_ channels: [Channel], on connection: PostgresConnection) throws -> [Channel] {
        guard !channels.isEmpty else { return channels }
        var pending: [Int64: Int64] = [:]
        try connection.query(
            """
            SELECT channel_id, sum(quota)::bigint FROM pending_channel_usage
            WHERE channel_id = ANY ($1::bigint[]) GROUP BY channel_id
            """, [PostgresArray.integers(channels.map(\.id))]
        ).forEach { pending[try $0.decode(0, as: Int64.self)] = try $0.decode(1, as: Int64.self) }
        return channels.map { channel in
            var channel = channel
            channel.usedQuota += pending[channel.id] ?? 0
            return channel
        }
    }

    /// Every named group must exist. They stay locked (KEY SHARE) until the channel is written,
    /// so that a group's deletion, which counts the channels naming it, cannot pass between.
    static func checkGroupsExist(_ groups: [String], on connection: PostgresConnection) throws {
        let known = Set(
            try connection.query(
                "SELECT name FROM groups WHERE name = ANY ($1::text[]) FOR KEY SHARE", [TextArray(groups)]
            ).map { try $0.decode(0, as: String.self) })
        if let missing = groups.first(where: { !known.contains($0) }) {
            throw StoreError.invalid("unknown group \"\(missing)\"")
        }
    }

    public func list(page: PageRequest) async throws -> Page<Channel> {
        try await pool.transaction { connection in
            // The rows and their pending usage in one snapshot: a fold committing between two
            // reads would show its usage in neither.
            try CitusLayout.readInOneSnapshot(on: connection)
            let total = try connection.query("SELECT count(*) FROM channels")[0].decode(0, as: Int.self)
            let rows = try connection.query(
                "SELECT \(Self.columns) FROM channels ORDER BY id DESC LIMIT $1 OFFSET $2",
                [page.size, page.offset])
            return Page(
                items: try Self.addingPending(try rows.map(Self.decode), on: connection), total: total, request: page)
        }
    }

    public func get(id: Int64) async throws -> Channel {
        guard id > 0, id <= Int64(Int32.max) else { throw StoreError.notFound("channel \(id) not found") }
        return try await pool.transaction { connection in
            try CitusLayout.readInOneSnapshot(on: connection)
            guard let row = try connection.query("SELECT \(Self.columns) FROM channels WHERE id = $1", [id]).first
            else {
                throw StoreError.notFound("channel \(id) not found")
            }
            return try Self.addingPending([try Self.decode(row)], on: connection)[0]
        }
    }

    public func create(_ draft: ChannelDraft, by actor: Actor) async throws -> Channel {
        try ChannelRules.checkName(draft.name)
        let groups = try ChannelRules.normalizedGroups(draft.groups)
        let models = try ChannelRules.normalizedModels(draft.models)
        return try await pool.transaction { connection in
            try Self.checkGroupsExist(groups, on: connection)
            let rows = try connection.query(
                SQL.returning(
                    Self.columns,
                    from: """
                        INSERT INTO channels (name, status, groups, models) VALUES ($1, $2, $3::text[], $4::text[])
                        """), [draft.name, draft.status, TextArray(groups), TextArray(models)])
            let channel = try Self.addingPending([try Self.decode(rows[0])], on: connection)[0]
            try ChangeNotice.send([ChangeNotice.channel(channel.id)], on: connection)
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "channel.create", target: "channel:\(channel.id)",
                before: nil, after: Self.auditFields(channel))
            return channel
        }
    }

    public func update(id: Int64, _ changes: ChannelChanges, by actor: Actor) async throws -> Channel {
        if let name = changes.name { try ChannelRules.checkName(name) }
        let groups = try changes.groups.map(ChannelRules.normalizedGroups)
        let models = try changes.models.map(ChannelRules.normalizedModels)
        // Channel ids are `integer`: a larger id cannot exist.
        guard id > 0, id <= Int64(Int32.max) else { throw StoreError.notFound("channel \(id) not found") }
        return try await pool.transaction { connection in
            guard
                let row = try connection.query("SELECT \(Self.columns) FROM channels WHERE id = $1 FOR UPDATE", [id])
                    .first
            else {
                throw StoreError.notFound("channel \(id) not found")
            }
            let before = try Self.decode(row)
            var after = before
            if let name = changes.name { after.name = name }
            if let status = changes.status { after.status = status }
            if let groups {
                try Self.checkGroupsExist(groups, on: connection)
                after.groups = groups
            }
            if let models { after.models = models }
            let rows = try connection.query(
                SQL.returning(
                    Self.columns,
                    from: """
                        UPDATE channels SET name = $2, status = $3, groups = $4::text[], models = $5::text[], updated_at = now()
                        WHERE id = $1
                        """), [id, after.name, after.status, TextArray(after.groups), TextArray(after.models)])
            let updated = try Self.addingPending([try Self.decode(rows[0])], on: connection)[0]
            try ChangeNotice.send([ChangeNotice.channel(id)], on: connection)
            try AuditLog.recordChange(
                on: connection, actor: actor, action: "channel.update", target: "channel:\(id)",
                before: Self.auditFields(before), after: Self.auditFields(updated))
            return updated
        }
    }

    /// The models offered to any of `groups` by enabled channels, sorted and unique.
    public func models(forGroups groups: [String]) async throws -> [String] {
        guard !groups.isEmpty else { return [] }
        return try await pool.withConnection { connection in
            try connection.query(
                """
                SELECT DISTINCT m FROM channels c, unnest(c.models) AS m
                WHERE c.status = \(ChannelStatus.enabled.sql) AND c.groups && $1::text[] ORDER BY m
                """, [TextArray(groups)]
            ).map { try $0.decode(0, as: String.self) }
        }
    }

    static func auditFields(_ channel: Channel) -> [String: any CustomStringConvertible] {
        [
            "name": channel.name, "status": channel.status.rawValue, "groups": channel.groups.joined(separator: ","),
            "models": channel.models.joined(separator: ","),
        ]
    }
}
