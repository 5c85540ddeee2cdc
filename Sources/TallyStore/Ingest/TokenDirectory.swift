import Foundation
import Synchronization
import TallyPostgres

/// Who a key belongs to, as ingest needs it.
public struct TokenIdentity: Sendable, Equatable {
    public let tokenID: Int64
    public let userID: Int64
    /// The token's group, or the user's group when the token has none.
    public let group: String
}

/// Resolves API keys (by hash) and token ids to their owner in one query per batch for the
/// keys not seen recently. A key's token and user never change, so only the group can go stale;
/// entries are re-read after `ttl` seconds.
public final class TokenDirectory: Sendable {
    private let pool: PostgresPool
    private let ttl: TimeInterval
    private let cache = Mutex<Cache>(Cache())

    private struct Cache {
        var byHash: [SecretHash: (TokenIdentity, Date)] = [:]
        var byID: [Int64: (TokenIdentity, Date)] = [:]
    }

    public init(pool: PostgresPool, ttl: TimeInterval = 30) {
        self.pool = pool
        self.ttl = ttl
    }

    /// The identities of the given keys (by hash) and token ids; unknown ones are absent.
    /// Deleted and disabled tokens still resolve: usage that happened is billed.
    public func resolve(hashes: Set<SecretHash>, tokenIDs: Set<Int64>) async throws
        -> (byHash: [SecretHash: TokenIdentity], byID: [Int64: TokenIdentity])
    {
        let now = Date()
        var byHash: [SecretHash: TokenIdentity] = [:]
        var byID: [Int64: TokenIdentity] = [:]
        var missingHashes: [SecretHash] = []
        var missingIDs: [Int64] = []
        cache.withLock { cache in
            for hash in hashes {
                if let (identity, at) = cache.byHash[hash], now.timeIntervalSince(at) < ttl {
                    byHash[hash] = identity
                } else {
                    missingHashes.append(hash)
                }
            }
            for id in tokenIDs {
                if let (identity, at) = cache.byID[id], now.timeIntervalSince(at) < ttl {
                    byID[id] = identity
                } else {
                    missingIDs.append(id)
                }
            }
        }
        guard !missingHashes.isEmpty || !missingIDs.isEmpty else { return (byHash, byID) }
        let hashArray = PostgresArray.text(missingHashes.map { $0.postgresText! })
        let idArray = PostgresArray.integers(missingIDs)
        let rows = try await pool.withConnection { connection in
            try connection.query(Self.lookup, [hashArray, idArray]).map { row in
                (
                    hash: try row.decode(0, as: String.self),
                    identity: TokenIdentity(
                        tokenID: try row.decode(1), userID: try row.decode(2), group: try row.decode(3))
                )
            }
        }
        let wantedIDs = Set(missingIDs)
        let wantedHashes = Dictionary(missingHashes.map { ($0.hex, $0) }, uniquingKeysWith: { first, _ in first })
        cache.withLock { cache in
            for (hashHex, identity) in rows {
                if let hash = wantedHashes[hashHex] {
                    byHash[hash] = identity
                    cache.byHash[hash] = (identity, now)
                }
                if wantedIDs.contains(identity.tokenID) {
                    byID[identity.tokenID] = identity
                    cache.byID[identity.tokenID] = (identity, now)
                }
            }
        }
        return (byHash, byID)
    }

    /// The owner of a key by hash, when it was resolved less than `ttl` ago.
    public func cached(hash: SecretHash, now: Date = Date()) -> TokenIdentity? {
        cache.withLock { cache in cache.byHash[hash].flatMap { now.timeIntervalSince($0.1) < ttl ? $0.0 : nil } }
    }

    /// The owner of a token id, when it was resolved less than `ttl` ago.
    public func cached(tokenID: Int64, now: Date = Date()) -> TokenIdentity? {
        cache.withLock { cache in cache.byID[tokenID].flatMap { now.timeIntervalSince($0.1) < ttl ? $0.0 : nil } }
    }

    /// Forgets everything (after an admin changes a token or user group).
    public func invalidateAll() {
        cache.withLock { $0 = Cache() }
    }

    private static let lookup = PreparedStatement(
        "token_directory_lookup",
        """
        SELECT encode(t.key_hash, 'hex'), t.id, t.user_id, COALESCE(NULLIF(t."group", ''), u."group")
        FROM tokens t JOIN users u ON u.id = t.user_id
        WHERE t.key_hash = ANY($1::bytea[]) OR t.id = ANY($2::bigint[])
        """)
}
