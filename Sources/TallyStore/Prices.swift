import Crypto
import Foundation
import Logging
import Synchronization
import TallyCore
import TallyPostgres

/// A price version as stored: the sheet plus who loaded it, from where, and when.
public struct StoredPriceVersion: Sendable {
    public let version: PriceVersion
    public let source: String
    public let loadedBy: String
    public let loadedAt: Date
    public let sha256: String
}

/// What lists show of a version (the sheet itself is left out).
public struct PriceVersionInfo: Codable, Sendable, Equatable {
    public let id: Int64
    public let effectiveFrom: String
    public let models: Int
    public let groups: Int
    public let source: String
    public let loadedBy: String
    public let loadedAt: String
    public let sha256: String

    /// The names `GET /api/admin/prices` and `tally prices list --json` show.
    enum CodingKeys: String, CodingKey {
        case id, models, groups, source, sha256
        case effectiveFrom = "effective_from", loadedBy = "loaded_by", loadedAt = "loaded_at"
    }
}

extension StoredPriceVersion {
    public var info: PriceVersionInfo {
        PriceVersionInfo(
            id: version.id, effectiveFrom: PostgresTimestamp.format(version.effectiveFrom),
            models: version.sheet.models.count, groups: version.sheet.groups.count, source: source,
            loadedBy: loadedBy, loadedAt: PostgresTimestamp.format(loadedAt), sha256: sha256)
    }
}

/// Price versions in `price_versions`. Each load is a new version; nothing is ever updated.
public protocol PriceRepository: Sendable {
    /// Stores a new version of `sheet`, in force from `effectiveFrom` (else the sheet's own
    /// `effective_from`, else now). Audited as `prices.load`.
    func load(_ sheet: PriceSheet, effectiveFrom: Date?, source: String, by actor: Actor) async throws
        -> StoredPriceVersion
    /// Every version, oldest effective first.
    func all() async throws -> [StoredPriceVersion]
    /// The greatest version id, to notice loads made by other instances cheaply.
    func newestID() async throws -> Int64?
}

public struct PostgresPriceRepository: PriceRepository {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    public func load(_ sheet: PriceSheet, effectiveFrom: Date?, source: String, by actor: Actor) async throws
        -> StoredPriceVersion
    {
        let json = sheet.canonicalJSON()
        let digest = SHA256.hash(data: Array(json.utf8)).map { String(format: "%02x", $0) }.joined()
        let effective = effectiveFrom ?? sheet.effectiveFrom
        return try await pool.transaction { connection in
            let rows = try connection.query(
                """
                INSERT INTO price_versions (effective_from, sheet, sha256, source, loaded_by)
                VALUES (COALESCE($1::timestamptz, now()), $2::jsonb, $3, $4, $5)
                RETURNING id, effective_from, loaded_at
                """, [effective, json, digest, source, actor.name])
            let id = try rows[0].decode(0, as: Int64.self)
            let from = try rows[0].decode(1, as: Date.self)
            // Every instance reloads on it at once, not at its next 5-second refresh.
            try ChangeNotice.send([.prices], on: connection)
            try AuditLog.record(
                on: connection, actor: actor, action: "prices.load", target: "price_version:\(id)",
                after: [
                    "effective_from": PostgresTimestamp.format(from), "sha256": digest, "source": source,
                    "models": String(sheet.models.count),
                ])
            return StoredPriceVersion(
                version: PriceVersion(id: id, effectiveFrom: from, sheet: sheet), source: source,
                loadedBy: actor.name, loadedAt: try rows[0].decode(2, as: Date.self), sha256: digest)
        }
    }

    public func all() async throws -> [StoredPriceVersion] {
        try await pool.withConnection { connection in
            try connection.query(
                """
                SELECT id, effective_from, sheet::text, source, loaded_by, loaded_at, sha256
                FROM price_versions ORDER BY effective_from, id
                """
            ).map { row in
                let id = try row.decode(0, as: Int64.self)
                let sheet: PriceSheet
                do { sheet = try PriceSheet.parse(try row.decode(2, as: String.self)) } catch {
                    throw StoreError.internalError("price version \(id) no longer parses: \(error)")
                }
                return StoredPriceVersion(
                    version: PriceVersion(id: id, effectiveFrom: try row.decode(1), sheet: sheet),
                    source: try row.decode(3), loadedBy: try row.decode(4), loadedAt: try row.decode(5),
                    sha256: try row.decode(6))
            }
        }
    }

    public func newestID() async throws -> Int64? {
        try await pool.withConnection { connection in
            try connection.query("SELECT max(id) FROM price_versions")[0].decodeOptional(0, as: Int64.self)
        }
    }
}

/// The price versions held in memory, so rating a request costs no query. Refreshed after a
/// local load and, for loads by other instances, by `refreshIfChanged()` on a timer.
public final class PriceCatalog: Sendable {
    private let repository: any PriceRepository
    private let state = Mutex<(book: PriceBook, newestID: Int64?)>((PriceBook(versions: []), nil))

    public init(repository: any PriceRepository) {
        self.repository = repository
    }

    /// The current book; cheap (a lock and a copy of a reference-backed array).
    public var book: PriceBook { state.withLock { $0.book } }

    /// Re-reads every version.
    public func reload() async throws {
        let versions = try await repository.all().map(\.version)
        let book = PriceBook(versions: versions)
        state.withLock { $0 = (book, versions.map(\.id).max()) }
    }

    /// Reloads when another instance stored a version since the last read.
    public func refreshIfChanged() async throws {
        let newest = try await repository.newestID()
        if newest != state.withLock({ $0.newestID }) { try await reload() }
    }

    /// Stores a new version and makes it visible here at once.
    public func load(_ sheet: PriceSheet, effectiveFrom: Date?, source: String, by actor: Actor) async throws
        -> StoredPriceVersion
    {
        let stored = try await repository.load(sheet, effectiveFrom: effectiveFrom, source: source, by: actor)
        try await reload()
        return stored
    }
}
