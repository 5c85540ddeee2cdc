import TallyCore

/// The simulation names accounts as the lease machine does.
typealias SimAccount = LeaseAccount

extension LeaseAccount: CustomStringConvertible {
    public var description: String {
        switch self {
        case .user(let id): "user:\(id)"
        case .token(let id): "token:\(id)"
        }
    }
}

/// What a transaction tells every listening instance when it commits (`tally_changes`).
enum SimNotification: Equatable, CustomStringConvertible {
    case leaseWanted(SimAccount)
    case overdrawn(SimAccount)

    var description: String {
        switch self {
        case .leaseWanted(let account): "lease-wanted:\(account)"
        case .overdrawn(let account): "overdrawn:\(account)"
        }
    }
}

/// A failed statement, as the caller sees it.
enum SimDatabaseError: Error, Equatable {
    /// `tally_lease` raised T0L01: the instance's registration is gone.
    case notRegistered
    /// The caller cannot tell whether the transaction committed (a crash, a lost connection).
    case aborted
    /// PostgreSQL answered with an error (a serialization failure, a statement timeout): the
    /// transaction did not commit.
    case rolledBack
    /// A release named a request id without a hold (404).
    case notFound
}

/// PostgreSQL as the money state machines see it: the tables they write, and the functions
/// they call, each applied as one atomic transaction (`transact`: all or nothing). Every
/// function mirrors the SQL it names; keep the two in step.
struct SimDatabase {
    struct User {
        var quota: Int64
        var reserved: Int64 = 0
        var usedQuota: Int64 = 0
        var requestCount: Int64 = 0
    }

    struct Token {
        let userID: Int64
        /// false: `unlimited_quota` (nothing to lease, remain_quota never moves).
        let limited: Bool
        var remainQuota: Int64
        var reserved: Int64 = 0
        var usedQuota: Int64 = 0
    }

    struct Registration {
        var expiresAt: SimTime
        let reclaimAfter: SimTime
    }

    enum HoldStatus: String { case held, settled, released, expired }

    struct Hold {
        let id: Int64
        let requestID: String
        let userID: Int64
        let tokenID: Int64
        let model: String
        let amount: Int64
        /// The amount is reserved from the (limited) token too.
        let tokenReserved: Bool
        var status: HoldStatus = .held
        let expiresAt: SimTime
    }

    /// A stored request row and what it was charged.
    struct Row {
        let userID: Int64
        let tokenID: Int64
        let cost: Int64
        let batch: Int64
    }

    struct LeaseKey: Hashable, Comparable {
        let instance: String
        let account: SimAccount

        static func < (lhs: LeaseKey, rhs: LeaseKey) -> Bool {
            lhs.instance != rhs.instance ? lhs.instance < rhs.instance : lhs.account < rhs.account
        }
    }

    /// `HoldBook.registrationTTLSeconds`, and the hold-id block (`INCREMENT BY 1024`).
    static let registrationTTL: SimTime = 15_000
    static let holdIDBlock: Int64 = 1024

    var users: [Int64: User] = [:]
    var tokens: [Int64: Token] = [:]
    var instances: [String: Registration] = [:]
    var leases: [LeaseKey: Int64] = [:]
    /// By request id (`holds_request_id_key`).
    var holds: [String: Hold] = [:]
    /// `request_logs` by request id (a resent line has the same `created_at`).
    var rows: [String: Row] = [:]
    /// The ledger, summed per user, and its charges per request id (one ledger row covers a
    /// batch × user × token; the simulation keeps the request ids to find a double charge).
    var ledgerBalance: [Int64: Int64] = [:]
    var charged: [String: Int] = [:]
    var batches: Int64 = 0
    var holdSequence: Int64 = 0
    /// A deliberate bug, for the tests that prove the invariants catch one (never set otherwise).
    var plantedBug: PlantedBug?
    /// Sent when the current transaction commits.
    private(set) var outbox: [SimNotification] = []

    /// Runs `body` as one transaction: its changes and notifications all commit, or (when it
    /// throws) none does.
    mutating func transact<T>(_ body: (inout SimDatabase) throws -> T) rethrows -> (T, [SimNotification]) {
        var copy = self
        copy.outbox = []
        let result = try body(&copy)
        let sent = copy.outbox
        copy.outbox = []
        self = copy
        return (result, sent)
    }

    mutating func notify(_ notification: SimNotification) {
        if !outbox.contains(notification) { outbox.append(notification) }
    }

    // MARK: Accounts

    mutating func createUser(_ id: Int64, quota: Int64) {
        users[id] = User(quota: quota)
        ledgerBalance[id] = quota
    }

    mutating func createToken(_ id: Int64, userID: Int64, limited: Bool, remainQuota: Int64) {
        tokens[id] = Token(userID: userID, limited: limited, remainQuota: remainQuota)
    }

    /// An admin's top-up: a ledger credit and the balance, in one transaction.
    mutating func topUp(user id: Int64, units: Int64) {
        users[id]?.quota += units
        ledgerBalance[id, default: 0] += units
    }

    func leased(_ account: SimAccount) -> Int64 {
        leases.reduce(0) { $1.key.account == account ? $0 + $1.value : $0 }
    }

    func leased(_ account: SimAccount, by instance: String) -> Int64 {
        leases[LeaseKey(instance: instance, account: account)] ?? 0
    }

    /// Per account, what the open holds and the leases reserve (`tally audit`'s sums), in one
    /// pass over the tables.
    func reservations() -> [SimAccount: Int64] {
        var reserved: [SimAccount: Int64] = [:]
        for hold in holds.values where hold.status == .held {
            reserved[.user(hold.userID), default: 0] += hold.amount
            if hold.tokenReserved { reserved[.token(hold.tokenID), default: 0] += hold.amount }
        }
        for (key, amount) in leases { reserved[key.account, default: 0] += amount }
        return reserved
    }
}

/// Bugs planted in the database model to show that the simulation finds them: a checker that
/// passes with a bug planted proves nothing.
enum PlantedBug: CaseIterable, Sendable {
    /// A resent line is charged again although its row is a duplicate.
    case chargeResentLines
    /// A batch is answered as stored although its last line was dropped.
    case dropLastLine
    /// `tally_lease` grants from the balance, forgetting what is reserved already.
    case leaseIgnoresReserved
    /// `tally_journal_holds` stores a hold without taking it off the lease row.
    case journalKeepsLeaseRows
}
