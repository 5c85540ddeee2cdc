import Foundation
import TallyCore

/// What a batch's newly stored lines owe, summed the way the batch's transaction appends it
/// (docs/ingest.md): one ledger charge per user × token × UTC month of the requests, one pending
/// charge per user × token (what the balance fold applies), and one pending usage row per user
/// × token × UTC day × model × group × kind (the grain of `usage_daily`, which the roll-up adds
/// it to), and what the lines cost per channel (`pending_channel_usage`, migration 0038).
struct BatchCharges {
    struct ChargeKey: Hashable, Comparable {
        let userID: Int64
        let tokenID: Int64
        let month: UTCDay

        static func < (lhs: ChargeKey, rhs: ChargeKey) -> Bool {
            (lhs.userID, lhs.tokenID, lhs.month) < (rhs.userID, rhs.tokenID, rhs.month)
        }
    }

    struct Charge: Equatable {
        var quota: Int64 = 0
        var requests: Int64 = 0
        /// The latest `created_at` (the key's `accessed_at`).
        var lastAt = Date.distantPast

        mutating func add(_ line: PricedLine) {
            quota += line.quota
            requests += 1
            lastAt = max(lastAt, line.createdAt)
        }

        mutating func add(_ other: Charge) {
            quota += other.quota
            requests += other.requests
            lastAt = max(lastAt, other.lastAt)
        }
    }

    struct AccountKey: Hashable, Comparable {
        let userID: Int64
        let tokenID: Int64

        static func < (lhs: AccountKey, rhs: AccountKey) -> Bool {
            (lhs.userID, lhs.tokenID) < (rhs.userID, rhs.tokenID)
        }
    }

    struct UsageKey: Hashable, Comparable {
        let userID: Int64
        let tokenID: Int64
        let day: UTCDay
        let model: String
        let group: String
        let kind: String

        static func < (lhs: UsageKey, rhs: UsageKey) -> Bool {
            (lhs.userID, lhs.tokenID, lhs.day, lhs.model, lhs.group, lhs.kind)
                < (rhs.userID, rhs.tokenID, rhs.day, rhs.model, rhs.group, rhs.kind)
        }
    }

    /// The `usage_daily` measures of a group of lines.
    struct UsageTotals: Equatable {
        var requests: Int64 = 0
        var failedRequests: Int64 = 0
        var promptTokens: Int64 = 0
        var completionTokens: Int64 = 0
        var cachedTokens: Int64 = 0
        var cacheWriteTokens: Int64 = 0
        var audioInputTokens: Int64 = 0
        var audioOutputTokens: Int64 = 0
        var images: Int64 = 0
        var videoSeconds = ExactDecimal.zero
        var calls: Int64 = 0
        var predictTime = ExactDecimal.zero
        var quota: Int64 = 0

        /// Adds one line. Batches are bounded (50,000 lines, each within `IngestLimits`), so no
        /// sum can leave `Int64` or the decimals' range.
        mutating func add(_ line: PricedLine) {
            let usage = line.usage
            requests += 1
            failedRequests += line.status >= 400 ? 1 : 0
            promptTokens += usage.promptTokens
            completionTokens += usage.completionTokens
            cachedTokens += usage.cachedTokens
            cacheWriteTokens += usage.cacheWriteTokens
            audioInputTokens += usage.audioInputTokens
            audioOutputTokens += usage.audioOutputTokens
            images += usage.images
            if !usage.videoSeconds.isZero { videoSeconds = videoSeconds.adding(usage.videoSeconds)! }
            calls += usage.calls
            if !usage.predictTime.isZero { predictTime = predictTime.adding(usage.predictTime)! }
            quota += line.quota
        }
    }

    /// Every charge per user × token × UTC month, in key order (sorted once: both the ledger's
    /// and the pending charges are written in that order).
    let charges: [(key: ChargeKey, charge: Charge)]
    private(set) var usage: [UsageKey: UsageTotals] = [:]
    /// What the lines that name a channel cost, per channel (none for lines that cost nothing).
    private(set) var channels: [Int64: Int64] = [:]

    init(_ lines: some Sequence<PricedLine>) {
        var charges: [ChargeKey: Charge] = [:]
        for line in lines {
            if let channel = line.channelID, line.quota != 0 { channels[channel, default: 0] += line.quota }
            let day = UTCDay(line.createdAt)
            charges[ChargeKey(userID: line.userID, tokenID: line.tokenID, month: day.monthStart), default: Charge()]
                .add(line)
            usage[
                UsageKey(
                    userID: line.userID, tokenID: line.tokenID, day: day, model: line.model, group: line.group,
                    kind: line.kind.rawValue), default: UsageTotals()
            ].add(line)
        }
        self.charges = charges.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// Ledger charges in key order; a group that costs nothing writes no ledger row.
    var ledgerCharges: [(key: ChargeKey, charge: Charge)] {
        charges.filter { $0.charge.quota != 0 }
    }

    /// Pending charges per account, in key order: the months of each account's charges added
    /// up (from the few charges of a batch rather than a third table filled line by line).
    var pendingCharges: [(key: AccountKey, charge: Charge)] {
        var accounts: [(key: AccountKey, charge: Charge)] = []
        for (key, charge) in charges {
            let account = AccountKey(userID: key.userID, tokenID: key.tokenID)
            if accounts.last?.key == account {
                accounts[accounts.count - 1].charge.add(charge)
            } else {
                accounts.append((account, charge))
            }
        }
        return accounts
    }

    /// The reservations that settling a batch's open holds gives back to one account: to the
    /// user, and to a limited key.
    struct Returned: Equatable {
        var user: Int64 = 0
        var token: Int64 = 0
    }

    /// One `pending_charges` row: what an account's lines charged (nil when the batch only
    /// settled its holds: a hold's key need not be its line's) and what its settled holds return.
    struct PendingRow: Equatable {
        let key: AccountKey
        let charge: Charge?
        let returned: Returned
    }

    /// The batch's `pending_charges` rows in key order, one per account: each account's charges
    /// with the reservations its settled holds return, so that settling a hold adds no row of
    /// its own for the fold to delete.
    func pendingRows(returning returned: [AccountKey: Returned]) -> [PendingRow] {
        var rows = pendingCharges.map {
            PendingRow(key: $0.key, charge: $0.charge, returned: returned[$0.key] ?? Returned())
        }
        let charged = Set(rows.map(\.key))
        let returnedOnly = returned.filter { !charged.contains($0.key) }
        guard !returnedOnly.isEmpty else { return rows }
        rows += returnedOnly.map { PendingRow(key: $0.key, charge: nil, returned: $0.value) }
        return rows.sorted { $0.key < $1.key }
    }

    /// Pending usage rows, in no particular order: `pending_usage` has no index to keep local,
    /// and the roll-up groups and orders them itself (sorting keys with three strings cost
    /// more server time per batch than the rows' COPY).
    var pendingUsage: [(key: UsageKey, totals: UsageTotals)] {
        usage.map { ($0.key, $0.value) }
    }
}
