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
    /// The owner may use the key's group: it is the owner's own or a selectable one. A key keeps
    /// the group it was given, and its owner may since have left it (or it stopped being
    /// selectable): new-api refuses such a key on every request, and so does authorize.
    /// Kept last: declared between `group` and `allowedModels`, the release build (Swift 6.3.1,
    /// -O) writes 8 bytes past the async frame of `key(_:now:leasing:)` when the lookup's answer
    /// comes back (AddressSanitizer on a release build, `ops/bench --sanitize address`), which
    /// corrupted the heap within a second of `ops/bench authorize`. The frame the compiler sizes
    /// is too small; nothing in the function is unsafe. As a class, or without the autoclosure,
    /// the type still crashed; this order runs clean under that check, which
    /// `ops/slow-tests/release-sanitized` runs on every change (docs/performance.md).
    public let groupUsable: Bool
}

/// A first lease to take with a cold key's lookup, in the same round trip (migration 0011):
/// `want` units of the key's user and token for `instance`; the grants go to `accept` with the
/// key's owner (a grant of the key alone, its user's row locked meanwhile, names no user).
public struct LookupLease: Sendable {
    public let instance: String
    public let want: Int64
    public let accept: @Sendable (_ userID: Int64, [LeaseGrant]) -> Void

    public init(instance: String, want: Int64, accept: @escaping @Sendable (_ userID: Int64, [LeaseGrant]) -> Void) {
        self.instance = instance
        self.want = want
        self.accept = accept
    }
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
    /// Cache misses: all those asked for while a lookup is out go together in the next one.
    private let misses: Coalescer<Miss, Found>
    /// Lookups in flight at once.
    public static let lookupConcurrency = 4

    private struct Miss: Sendable {
        let hash: SecretHash
        let lease: LookupLease?
    }

    private struct Found: Sendable {
        let access: KeyAccess?
        let grants: [LeaseGrant]
    }

    /// The lease calls of one lookup batch (migration 0034), answered together once the batch
    /// returns: a grant whose call was answered while a later key of the batch failed would never
    /// reach its book, nor be given up. Opened on a connection held, so a batch that never reached
    /// PostgreSQL owes nothing. (Kept out of `LookupLease`, whose layout `key(_:now:leasing:)`'s
    /// miscompiled frame depends on: docs/performance.md.)
    private final class LookupCalls: Sendable {
        private let opened = Mutex<[(calls: UnansweredCalls, id: Int64)]>([])

        func open(_ lease: LookupLease) -> (id: Int64, owedFrom: Int64) {
            let calls = UnansweredCalls.of(instance: lease.instance)
            let call = calls.open(instance: lease.instance, amounts: [])
            opened.withLock { $0.append((calls, call.id)) }
            return (call.id, calls.owedFrom(instance: lease.instance, sending: call.id))
        }

        func answered() { for call in taken() { call.calls.answered(call.id) } }

        func failed() { for call in taken() { call.calls.failed(call.id) } }

        /// The batch's one statement threw `error`: answered if PostgreSQL refused it (it rolled
        /// back), else left to `failed()`. Only where every call so far ran in that statement.
        func statementFailed(_ error: any Error) { if UnansweredCalls.rolledBack(error) { answered() } }

        private func taken() -> [(calls: UnansweredCalls, id: Int64)] {
            opened.withLock { opened in
                defer { opened = [] }
                return opened
            }
        }
    }

    private struct State {
        var keys: [SecretHash: (access: KeyAccess?, at: Date)] = [:]
        /// The size of `keys` at which entries past their time are swept out: every key a
        /// client ever sent (each random header an unknown key) stays until a read replaces it,
        /// so without the sweep the cache grows with every new header for good.
        var sweepAt = AccessDirectory.smallestSweep
        var channels: (map: ChannelMap, at: Date)?
        /// Bumped by every invalidation, so a read that raced one is not cached.
        var generation = 0
    }

    static let smallestSweep = 1_024

    public init(pool: PostgresPool, ttl: TimeInterval = 60, unknownTTL: TimeInterval = 5) {
        self.pool = pool
        self.ttl = ttl
        self.unknownTTL = unknownTTL
        let layout = DatabaseLayout()
        misses = Coalescer(limit: Self.lookupConcurrency) { misses in
            do {
                return try await Self.read(misses, pool: pool, layout: layout)
            } catch let error as PostgresError where error.isLostRace && misses.contains(where: { $0.lease != nil }) {
                // PostgreSQL aborted the lookup to break a deadlock over an account it leased
                // for. The keys are read again without leasing, which they can do without (the
                // first hold refills through the lease books, which retry), rather than failing
                // every authorization of the batch.
                return try await Self.read(misses.map { Miss(hash: $0.hash, lease: nil) }, pool: pool, layout: layout)
            }
        }
    }

    /// One lookup of a batch of misses, its lease calls answered or owed as it ends.
    private static func read(_ misses: [Miss], pool: PostgresPool, layout: DatabaseLayout) async throws -> [Found] {
        let calls = LookupCalls()
        do {
            let found = try await pool.withConnection { connection in
                try layout.isDistributed(on: connection)
                    ? misses.map { try Self.lookUpOnItsShard($0, calls, connection) }
                    : Self.lookUp(misses, calls, connection)
            }
            calls.answered()
            return found
        } catch {
            calls.failed()
            throw error
        }
    }

    /// The key with this hash, or nil when no such key exists (or it was deleted). On a cache
    /// miss, the lease `leasing` names (if any) is taken in the same round trip.
    public func key(_ hash: SecretHash, now: Date = Date(), leasing: @autoclosure () -> LookupLease? = nil)
        async throws -> KeyAccess?
    {
        let (cached, generation): (KeyAccess??, Int) = state.withLock { state in
            guard let entry = state.keys[hash],
                now.timeIntervalSince(entry.at) < (entry.access == nil ? unknownTTL : ttl)
            else { return (nil, state.generation) }
            return (.some(entry.access), state.generation)
        }
        if let cached { return cached }
        let lease = leasing()
        let found = try await misses.submit(Miss(hash: hash, lease: lease))
        if let lease, let access = found.access, !found.grants.isEmpty { lease.accept(access.userID, found.grants) }
        state.withLock { state in
            guard state.generation == generation else { return }
            state.keys[hash] = (found.access, now)
            if state.keys.count >= state.sweepAt { sweep(&state, now: now) }
        }
        return found.access
    }

    /// Drops the entries past their time; the next sweep comes when the cache has doubled
    /// again, so the cache stays within twice what was read within a time to live, at a cost
    /// per lookup that does not grow with it.
    private func sweep(_ state: inout State, now: Date) {
        state.keys = state.keys.filter {
            now.timeIntervalSince($0.value.at) < ($0.value.access == nil ? unknownTTL : ttl)
        }
        state.sweepAt = max(Self.smallestSweep, 2 * state.keys.count)
    }

    /// How many keys are cached, found or not (tests).
    var cachedKeys: Int { state.withLock { $0.keys.count } }

    /// Reads the keys of `misses` in one statement, leasing for those that asked (and may be
    /// used) in the same transaction. Each account's grant goes to one miss only.
    private static func lookUp(_ misses: [Miss], _ calls: LookupCalls, _ connection: PostgresConnection) throws
        -> [Found]
    {
        let lease = misses.lazy.compactMap(\.lease).first
        let instance = lease?.instance ?? ""
        let wants = misses.map { $0.lease.map { $0.instance == instance ? $0.want : 0 } ?? 0 }
        // Only a lookup that leases is a lease call (one that may need giving up).
        let call = lease.flatMap { wants.contains { $0 > 0 } ? calls.open($0) : nil }
        let rows: PostgresRows
        do {
            rows = try connection.query(
                lookupBatch,
                [
                    PostgresArray.text(misses.map(\.hash.hex)), instance, PostgresArray.integers(wants),
                    call?.id ?? 0, call?.owedFrom ?? 0,
                ])
        } catch {
            calls.statementFailed(error)
            throw error
        }
        return try found(rows, wants: wants)
    }

    /// On Citus, one key at a time, each statement on one shard: the key's owner from
    /// `account_lookup` (the shard of its hash), the key and its owner (the owner's shard), then
    /// the lease (on the coordinator, one shard per statement, migration 0022). The batch
    /// statement finds keys by hash, which `tokens`, distributed by owner, can only answer from
    /// every shard. Unnamed statements, so that Citus plans each for its values and routes it.
    private static func lookUpOnItsShard(_ miss: Miss, _ calls: LookupCalls, _ connection: PostgresConnection)
        throws -> Found
    {
        guard let owner = try connection.query(keyOwner, [miss.hash.hex]).first else {
            return Found(access: nil, grants: [])
        }
        let (user, token): (Int64, Int64) = (try owner.decode(0), try owner.decode(1))
        let want = miss.lease?.want ?? 0
        guard let row = try connection.query(ownedKey, [PostgresArray.text([miss.hash.hex]), want, user, token]).first
        else { return Found(access: nil, grants: []) }
        let access = try decode(row)
        guard let lease = miss.lease, try row.decode(15, as: Int64.self) > 0 else {
            return Found(access: access, grants: [])
        }
        let call = calls.open(lease)
        let grants = try connection.query(leaseOnLookup, [lease.instance, user, want, token, call.id, call.owedFrom])
            .map { try decodeGrant($0, from: 0) }
        return Found(access: access, grants: grants)
    }

    /// The keys and grants of a lookup's rows, in the order of `wants` (one per key asked). Every
    /// grant of a user's accounts, the user's and each of its keys', goes to the first of that
    /// user's keys that asked: the lease function answers one grant per account, so a user with
    /// two keys in one batch has one user grant for both, and a key's grant without its user's
    /// was dropped by the hold book (it routes grants by user), its units leased and never used.
    private static func found(_ rows: PostgresRows, wants: [Int64]) throws -> [Found] {
        var accesses = [KeyAccess?](repeating: nil, count: wants.count)
        var grants: [LeaseGrant] = []
        try rows.forEach { row in
            if let ordinal = try row.decodeOptional(14, as: Int64.self) {
                accesses[Int(ordinal) - 1] = try decode(row)
            } else {
                grants.append(try decodeGrant(row))
            }
        }
        var userOfToken: [Int64: Int64] = [:]
        for case let access? in accesses { userOfToken[access.tokenID] = access.userID }
        var mine = [[LeaseGrant]](repeating: [], count: wants.count)
        for grant in grants {
            let user: Int64? =
                switch grant.account {
                case .user(let id): id
                case .token(let id): userOfToken[id]
                }
            let owner = accesses.indices.first { wants[$0] > 0 && accesses[$0]?.userID == user }
            if let owner { mine[owner].append(grant) }
        }
        return wants.indices.map { Found(access: accesses[$0], grants: mine[$0]) }
    }

    /// The channel map, re-read after `ttl` or an invalidation.
    public func channels(now: Date = Date()) async throws -> ChannelMap {
        if let cached = state.withLock({ state in
            state.channels.flatMap { now.timeIntervalSince($0.at) < ttl ? $0.map : nil }
        }) {
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

    /// Drops what `change` names: a key's or a user's keys, or the channel map; a group, an
    /// import or everything forgets every entry.
    public func invalidate(_ change: ChangeNotice) {
        state.withLock { state in
            state.generation += 1
            switch change {
            case .token(let id): state.keys = state.keys.filter { $0.value.access?.tokenID != id }
            case .user(let id): state.keys = state.keys.filter { $0.value.access?.userID != id }
            case .channel: state.channels = nil
            case .group, .import, .everything:
                state.keys = [:]
                state.channels = nil
            case .overdrawn, .leaseWanted, .prices, .logsDropped: break  // nothing cached here changed
            }
        }
    }

    /// Forgets everything (after the listener reconnects and may have missed notifications).
    public func invalidateAll() { invalidate(.everything) }

    // MARK: SQL

    /// The keys asked for (`$1`, hex), each as one row with its ordinal (column 14), and the
    /// grants of the leases taken for them (columns 15–19: one row per account leased), for
    /// `$2` with `$3` units per key — for keys that may be used only (migration 0011) — as `$2`'s
    /// lease call `$4` (`$5`: its first call not answered, migration 0034).
    private static let lookupBatch = PreparedStatement(
        "access_directory_keys_lease",
        """
        WITH k AS MATERIALIZED (\(keySelect(keys: "t.key_hash = decode(a.hash, 'hex')", wants: "$3"))),
        l AS MATERIALIZED (
            SELECT * FROM tally_lease_call($2, $4, $5, true,
                ARRAY(SELECT k.user_id FROM k WHERE k.want > 0 ORDER BY k.ordinal),
                ARRAY(SELECT k.want FROM k WHERE k.want > 0 ORDER BY k.ordinal),
                ARRAY(SELECT k.id FROM k WHERE k.want > 0 ORDER BY k.ordinal),
                ARRAY(SELECT k.want FROM k WHERE k.want > 0 ORDER BY k.ordinal))
        )
        SELECT k.id, k.user_id, k.key_last6, k.enabled, k.expires_at, k.suspended, k.role, k.name, k.group_usable,
               k.model_limits_enabled, k.model_limits, k.allow_ips, k.rpm, k.model_rpm_limit, k.ordinal,
               NULL::text, NULL::bigint, NULL::bigint, NULL::text, NULL::bigint
        FROM k
        UNION ALL
        SELECT NULL::bigint, NULL::bigint, NULL::text, NULL::boolean, NULL::timestamptz, NULL::boolean, NULL::integer,
               NULL::text, NULL::boolean, NULL::boolean, NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::bigint,
               l.kind, l.account_id, l.granted, l.state, l.others
        FROM l
        """)

    /// A key's owner and id by the key's hash (`$1`, hex), on the shard of its hash.
    private static let keyOwner =
        "SELECT user_id, token_id FROM account_lookup WHERE lookup = decode($1, 'hex') AND kind = 'key'"

    /// One key (`$1`, a one-element array of its hash) of owner `$3`, id `$4`: one shard. Column 15
    /// is what to lease with it (`$2` when the key may be used, else 0).
    private static let ownedKey = keySelect(
        keys: "t.user_id = $3::bigint AND t.id = $4::bigint AND t.key_hash = decode(a.hash, 'hex')",
        wants: "ARRAY[$2::bigint]")

    /// The lookup's lease of `$3` units of user `$2` and key `$4` for instance `$1`, as its lease
    /// call `$5` (`$6`: the instance's first call not answered, migration 0034).
    private static let leaseOnLookup = """
        SELECT kind, account_id, granted, state, others
        FROM tally_lease_call($1, $5, $6, true, ARRAY[$2::bigint], ARRAY[$3::bigint], ARRAY[$4::bigint], ARRAY[$3::bigint])
        """

    /// The keys that `keys` finds among the hashes `$1`, with what to lease for each from `wants`.
    private static func keySelect(keys: String, wants: String) -> String {
        """
        SELECT t.id, t.user_id, t.key_last6,
               t.status = \(TokenStatus.enabled.sql) AND t.deleted_at IS NULL AS enabled, t.expires_at,
               u.status <> \(UserStatus.enabled.sql) AS suspended, u.role, g.name,
               g.selectable OR g.name = u."group" AS group_usable, t.model_limits_enabled,
               t.model_limits, t.allow_ips,
               coalesce(t.rpm_limit, g.rpm_limit) AS rpm, g.model_rpm_limit, a.ordinal,
               CASE WHEN t.status = \(TokenStatus.enabled.sql) AND t.deleted_at IS NULL
                         AND (t.expires_at IS NULL OR NOT \(SQL.expiryPassed("t.expires_at"))) AND u.status = \(UserStatus.enabled.sql)
                         AND (g.selectable OR g.name = u."group")
                    THEN a.want ELSE 0 END AS want
        FROM unnest($1::text[], \(wants)::bigint[]) WITH ORDINALITY AS a(hash, want, ordinal)
        JOIN tokens t ON \(keys)
        JOIN users u ON u.id = t.user_id
        JOIN groups g ON g.name = coalesce(nullif(t."group", ''), u."group")
        """
    }

    /// A grant from the columns `first` … `first + 4` of a row (kind, account, granted, state, others).
    private static func decodeGrant(_ row: PostgresRow, from first: Int = 15) throws -> LeaseGrant {
        let id: Int64 = try row.decode(first + 1)
        let account: LeaseAccount = try row.decode(first, as: String.self) == "user" ? .user(id) : .token(id)
        let state = LeaseGrant.State(rawValue: try row.decode(first + 3)) ?? .unknown
        return LeaseGrant(
            account: account, granted: try row.decode(first + 2), state: state, others: try row.decode(first + 4))
    }

    private static func decode(_ row: PostgresRow) throws -> KeyAccess {
        let limitsOn: Bool = try row.decode(9)
        let limits: String = try row.decode(10)
        let keyRPM = try row.decodeOptional(12, as: Int64.self)
        let modelRPM = try row.decodeOptional(13, as: Int64.self)
        return KeyAccess(
            tokenID: try row.decode(0), userID: try row.decode(1), keyLast6: try row.decode(2),
            tokenEnabled: try row.decode(3), expiresAt: try row.decodeOptional(4), userSuspended: try row.decode(5),
            userRole: Role(rawValue: Int(try row.decode(6, as: Int64.self))) ?? .user, group: try row.decode(7),
            allowedModels: limitsOn
                ? Set(limits.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) : nil,
            allowIPs: try? IPAllowList.parse(try row.decode(11)),
            keyRPM: keyRPM.map { Int($0) }, userModelRPM: modelRPM.map { Int($0) }, groupUsable: try row.decode(8))
    }

    private static let channelRows = PreparedStatement(
        "access_directory_channels",
        "SELECT id, status = \(ChannelStatus.enabled.sql), array_to_string(groups, ','), array_to_string(models, ',') "
            + "FROM channels")

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

/// Whether the database is a Citus cluster, asked once (on the first lookup).
private final class DatabaseLayout: Sendable {
    private let distributed = Mutex<Bool?>(nil)

    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    func isDistributed(on connection: PostgresConnection) throws -> Bool {
        if let known = distributed.withLock({ $0 }) { return known }
        let answer = try CitusLayout.isInstalled(on: connection)
        distributed.withLock { $0 = answer }
        return answer
    }
}
