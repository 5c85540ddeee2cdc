import Foundation
import TallyCore
import TallyPostgres
import TallyStore

/// What a database holds after gateway clients were acknowledged `acked` lines, checked against
/// prices computed here from the lines themselves (TallyCore's `rate` over `designPriceSheet`),
/// not against anything the server reported.
public struct IngestFigures: Sendable, CustomStringConvertible {
    /// Acknowledged request ids.
    public var ackedLines = 0
    /// Acknowledged request ids with no row in `request_logs`.
    public var linesLost = 0
    /// Request ids stored more than once.
    public var linesStoredTwice = 0
    /// Rows whose request id was never acknowledged (only possible for given-up batches).
    public var linesNeverAcked = 0
    /// Users whose ledger charges exceed the price of their distinct acknowledged lines, and
    /// the units by which they do.
    public var usersChargedTwice = 0
    public var unitsChargedTwice: Int64 = 0
    /// Users whose charges, used_quota or balance disagree with those prices in any way.
    public var usersMischarged: [String] = []
    /// `tally audit` (the real binary) exit status and output.
    public var auditStatus: Int32 = -1
    public var auditOutput = ""

    public init() {}

    /// Nothing lost, doubled or mischarged, and the audit clean — over at least one acknowledged
    /// line: a run in which no batch was acknowledged proves nothing, so it is not clean.
    public var isClean: Bool {
        ackedLines > 0 && linesLost == 0 && linesStoredTwice == 0 && linesNeverAcked == 0 && usersChargedTwice == 0
            && usersMischarged.isEmpty && auditStatus == 0
    }

    public var description: String {
        "acked lines \(ackedLines), lines lost \(linesLost), stored twice \(linesStoredTwice), never acked \(linesNeverAcked), "
            + "double charges \(usersChargedTwice) users / \(unitsChargedTwice) units, mischarged users \(usersMischarged.count), "
            + "tally audit exit \(auditStatus)"
    }
}

public enum IngestInvariants {
    /// Compares the database with the acknowledged lines (request id → line). Every synthetic
    /// user `1…users` started with `initialQuota` and was charged only by these lines.
    public static func check(_ db: TestDatabase, acked: [String: String], users: Int, initialQuota: Int64) async throws
        -> IngestFigures
    {
        var figures = IngestFigures()
        figures.ackedLines = acked.count
        let stored = try await db.pool.withConnection { connection in
            try connection.query("SELECT request_id, count(*) FROM request_logs GROUP BY request_id").map {
                (try $0.decode(0, as: String.self), try $0.decode(1, as: Int64.self))
            }
        }
        var storedIDs: Set<String> = []
        for (id, count) in stored {
            storedIDs.insert(id)
            if count > 1 { figures.linesStoredTwice += 1 }
            if acked[id] == nil { figures.linesNeverAcked += 1 }
        }
        figures.linesLost = acked.keys.filter { !storedIDs.contains($0) }.count

        let expected = try expectedCharges(acked.values)
        let actual = try await db.pool.withConnection { connection in
            try connection.query(
                """
                SELECT u.username, b.quota, b.used_quota,
                       coalesce((SELECT -sum(amount) FROM ledger l WHERE l.user_id = u.id AND l.kind = 'charge'), 0)
                FROM users u JOIN user_balances b ON b.id = u.id WHERE u.username LIKE 'synthetic-%'
                """
            ).map {
                (
                    try $0.decode(0, as: String.self), try $0.decode(1, as: Int64.self),
                    try $0.decode(2, as: Int64.self), try $0.decode(3, as: Int64.self)
                )
            }
        }
        for (username, quota, used, charged) in actual {
            let due = expected[username] ?? 0
            if charged > due {
                figures.usersChargedTwice += 1
                figures.unitsChargedTwice += charged - due
            }
            if charged != due || used != due || quota != initialQuota - due {
                figures.usersMischarged.append(
                    "\(username): priced \(due), charged \(charged), used_quota \(used), balance \(quota)")
            }
        }
        let url = db.url
        let audit = try await offThePool {
            Result { try TallyBinary.run(["audit"], databaseURL: url, expecting: .any) }
        }.get()
        (figures.auditStatus, figures.auditOutput) = (audit.status, audit.output + audit.errorOutput)
        return figures
    }

    /// The price of each user's distinct lines at `designPriceSheet` (group: the line's, else default).
    public static func expectedCharges(_ lines: some Sequence<String>) throws -> [String: Int64] {
        let sheet = try PriceSheet.parse(designPriceSheet)
        var owners: [String: String] = [:]
        var due: [String: Int64] = [:]
        for line in lines {
            guard let parsed = LogLines.parse(line), let key = parsed.key, let model = parsed.model else {
                throw TestClusterError(message: "an acknowledged line does not parse: \(line.prefix(200))")
            }
            let username: String
            if let known = owners[key] {
                username = known
            } else {
                guard let index = Int(key.dropFirst("sk-tallysynthetic".count)) else {
                    throw TestClusterError(message: "not a synthetic key: \(Secrets.last6(key))")
                }
                username = SyntheticKeys.username(forUser: index)
                owners[key] = username
            }
            let failed = (parsed.status ?? 200) >= 400
            let rating = try rate(
                parsed.usage ?? Usage(), model: model, group: parsed.group ?? "default", failed: failed, sheet: sheet)
            due[username, default: 0] += rating.units
        }
        return due
    }
}
