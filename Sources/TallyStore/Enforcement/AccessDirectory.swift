import Foundation
import Synchronization
import TallyCore
import TallyPostgres

/// Everything `authorize` needs to know about a key before it reserves quota, read in one query.
public struct KeyAccess: Sendable {
    public let tokenID: Int64
    public let userID: Int64
    public let keyLast6: String
    /// Enabled, not deleted (expiry is checked at use: it passes while cached).
    public let tokenEnabled: Bool
    public let expiresAt: Date?
    public let userSuspended: Bool
    public let userRole: Role
    /// The key's group, or its owner's when the key names none.
    public let group: String
    /// nil when model limits are off.
    public let allowedModels: Set<String>?
    /// nil when the stored list cannot be read (it was validated when written): then no
    /// address is allowed.
    public let allowIPs: IPAllowList?
    /// Requests per minute for the key: its own limit, else its group's.
    public let keyRPM: Int?
    /// Requests per minute per user × model: the group's.
    public let userModelRPM: Int?
}

/// A channel as authorize sees it.
public struct ChannelAccess: Sendable {
    public let id: Int64
    public let enabled: Bool
}

/// Which channels exist and which models each group can reach through an enabled channel.
public struct ChannelMap: Sendable {
    public let channels: [Int64: ChannelAccess]
    public let modelsByGroup: [String: Set<String>]
}

/// An in-memory cache of keys (by hash) and channels, so `authorize` reads PostgreSQL only on a
/// miss. Entries are dropped when the row changes — the `tally_changes` notifications of every
/// instance's writes arrive through ``invalidate(_:)`` — and re-read after `ttl` seconds anyway,
/// so a lost notification heals itself. Unknown keys are cached too (briefly), so a flood of
/// bad keys does not reach the database.
public final class AccessDirectory: Sendable {
    private let pool: PostgresPool
    private let ttl: TimeInterval
    private let unknownTTL: TimeInterval
    private let state = Mutex<State>(State())

    private struct State {
        var keys: [SecretHash: (access: KeyAccess?, at: Date)] = [:]
        var channels: (map: ChannelMap, at: Date)?
        /// Bumped by every invalidation, so a read that raced one is not cached.
        var generation = 0
    }

    public init(pool: PostgresPool, ttl: TimeInterval = 60, unknownTTL: TimeInterval = 5) {
        self.pool = pool
        self.ttl = ttl
        self.unknownTTL = unknownTTL
    }

    /// The key with this hash, or nil when no such key exists (or it was deleted).
    public func key(_ hash: SecretHash, now: Date = Date()) async throws -> KeyAccess? {
        let (cached, generation): (KeyAccess??, Int) = state.withLock { state in
            guard let entry = state.keys[hash],
                  now.timeIntervalSince(entry.at) < (entry.access == nil ? unknownTTL : ttl) else { return (nil, state.generation) }
            return (.some(entry.access), state.generation)
        }
        if let cached { return cached }
        let access = try await pool.withConnection { connection in
            try connection.query(Self.lookup, [hash]).first.map(Self.decode)
        }
        state.withLock { state in
            if state.generation == generation { state.keys[hash] = (access, now) }
        }
        return access
    }

    /// The channel map, re-read after `ttl` or an invalidation.
    public func channels(now: Date = Date()) async throws -> ChannelMap {
        if let cached = state.withLock({ state in state.channels.flatMap { now.timeIntervalSince($0.at) < ttl ? $0.map : nil } }) {
            return cached
        }
        let generation = state.withLock { $0.generation }
        let map = try await pool.withConnection { connection in
            try Self.channelMap(connection.query(Self.channelRows))
        }
        state.withLock { state in
            if state.generation == generation { state.channels = (map, now) }
        }
        return map
    }

    /// Applies one `tally_changes` payload (`token:<id>`, `user:<id>`, `group:<name>`,
    /// `channel:<id>`); anything else forgets everything.
    public func invalidate(_ payload: String) {
        let parts = payload.split(separator: ":", maxSplits: 1).map(String.init)
        state.withLock { state in
            state.generation += 1
            switch (parts.first, parts.count == 2 ? Int64(parts[1]) : nil) {
            case ("token", let id?): state.keys = state.keys.filter { $0.value.access?.tokenID != id }
            case ("user", let id?): state.keys = state.keys.filter { $0.value.access?.userID != id }
            case ("channel", _): state.channels = nil
            default:
                state.keys = [:]
                state.channels = nil
            }
        }
    }

    /// Forgets everything (after the listener reconnects and may have missed notifications).
    public func invalidateAll() { invalidate("*") }

    // MARK: SQL

    private static let lookup = PreparedStatement("access_directory_key", """
        SELECT t.id, t.user_id, t.key_last6, t.status = 1 AND t.deleted_at IS NULL, t.expires_at,
               u.status <> 1, u.role, g.name, t.model_limits_enabled, t.model_limits, t.allow_ips,
               coalesce(t.rpm_limit, g.rpm_limit), g.model_rpm_limit
        FROM tokens t
        JOIN users u ON u.id = t.user_id
        JOIN groups g ON g.name = coalesce(nullif(t."group", ''), u."group")
        WHERE t.key_hash = $1
        """)

    private static func decode(_ row: PostgresRow) throws -> KeyAccess {
        let limitsOn: Bool = try row.decode(8)
        let limits: String = try row.decode(9)
        let keyRPM = try row.decodeOptional(11, as: Int64.self)
        let modelRPM = try row.decodeOptional(12, as: Int64.self)
        return KeyAccess(
            tokenID: try row.decode(0), userID: try row.decode(1), keyLast6: try row.decode(2),
            tokenEnabled: try row.decode(3), expiresAt: try row.decodeOptional(4), userSuspended: try row.decode(5),
            userRole: Role(rawValue: Int(try row.decode(6, as: Int64.self))) ?? .user, group: try row.decode(7),
            allowedModels: limitsOn ? Set(limits.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) : nil,
            allowIPs: try? IPAllowList.parse(try row.decode(10)),
            keyRPM: keyRPM.map { Int($0) }, userModelRPM: modelRPM.map { Int($0) })
    }

    private static let channelRows = PreparedStatement("access_directory_channels",
        "SELECT id, status = 1, array_to_string(groups, ','), array_to_string(models, ',') FROM channels")

    private static func channelMap(_ rows: PostgresRows) throws -> ChannelMap {
        var channels: [Int64: ChannelAccess] = [:]
        var modelsByGroup: [String: Set<String>] = [:]
        try rows.forEach { row in
            let channel = ChannelAccess(id: try row.decode(0), enabled: try row.decode(1))
            channels[channel.id] = channel
            guard channel.enabled else { return }
            // Group and model names never contain commas (checked when written).
            let models = try row.decode(3, as: String.self).split(separator: ",").map(String.init)
            for group in try row.decode(2, as: String.self).split(separator: ",") {
                modelsByGroup[String(group), default: []].formUnion(models)
            }
        }
        return ChannelMap(channels: channels, modelsByGroup: modelsByGroup)
    }
}
