/// The values the lease book works with (docs/enforcement.md, "Leases"): what is asked, what
/// the database answers, what authorize is told. Plain values, so a simulation can build,
/// compare and replay them.

/// An account a lease is taken from: a user, or a limited token.
public enum LeaseAccount: Hashable, Sendable, Comparable {
    case user(Int64)
    case token(Int64)
}

/// An account and a number of units (a want, a grant, a return).
public struct AccountUnits: Sendable, Equatable {
    public let account: LeaseAccount
    public let units: Int64

    public init(_ account: LeaseAccount, _ units: Int64) {
        self.account = account
        self.units = units
    }
}

/// When authorize answers.
public enum HoldCommitMode: String, Sendable, CaseIterable {
    /// After the hold's journal batch committed: durable, and a retry on another instance
    /// finds it.
    case sync
    /// As soon as the hold is cut in memory; the journal follows within milliseconds.
    case async
}

/// What a request id was authorized for: one account, through one key, for one model. A retry
/// names the same; a request id met again with another scope is another request's, never a
/// retry (a key's limit, or a cheap model's hold, would otherwise cover it).
public struct RequestScope: Sendable, Hashable {
    public let userID: Int64
    public let tokenID: Int64
    public let model: String

    public init(userID: Int64, tokenID: Int64, model: String) {
        self.userID = userID
        self.tokenID = tokenID
        self.model = model
    }

    /// The model compared by bytes, as the `holds` table compares it (``ExactText``).
    public static func == (lhs: RequestScope, rhs: RequestScope) -> Bool {
        lhs.userID == rhs.userID && lhs.tokenID == rhs.tokenID && ExactText(lhs.model) == ExactText(rhs.model)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(userID)
        hasher.combine(tokenID)
        hasher.combine(ExactText(model))
    }
}

/// One reservation asked for by `authorize`.
public struct HoldRequest: Sendable, Equatable {
    public let requestID: String
    public let userID: Int64
    public let tokenID: Int64
    public let model: String
    public let amount: Int64
    public let tid: String

    public init(requestID: String, userID: Int64, tokenID: Int64, model: String, amount: Int64, tid: String) {
        self.requestID = requestID
        self.userID = userID
        self.tokenID = tokenID
        self.model = model
        self.amount = amount
        self.tid = tid
    }

    public var scope: RequestScope { RequestScope(userID: userID, tokenID: tokenID, model: model) }
}

/// What became of a reservation.
public enum HoldOutcome: Sendable, Equatable {
    /// A new hold of `amount` units.
    case held(holdID: Int64, amount: Int64)
    /// A hold with this request id exists already; nothing more was reserved.
    case duplicate(holdID: Int64, amount: Int64, status: String)
    /// The user or the limited token cannot cover the amount.
    case insufficient
    /// The limited token has no quota left.
    case exhausted
    /// The user or the token no longer exists.
    case unknown
    /// The request id is another request's hold (another account's, key's or model's): nothing
    /// was reserved, and the request is not that hold's retry (``RequestScope``).
    case requestIDInUse

    /// A refusal for want of units, which a hold already stored under the request id answers
    /// instead (a retry this instance does not remember: ``HoldBook`` and the simulation's shell
    /// look it up before answering).
    public var isShortOfUnits: Bool {
        switch self {
        case .insufficient, .exhausted: true
        case .held, .duplicate, .unknown, .requestIDInUse: false
        }
    }
}

/// Why a reservation got no outcome.
public enum LeaseFailure: Sendable, Equatable {
    /// The instance's registration is not valid (it could not be renewed, or the instance is
    /// shutting down): it may not cut holds.
    case registrationLapsed
    /// The refill, the hold-id block or the journal batch the reservation waited for failed.
    case refillFailed
    case holdIDsFailed
    case journalFailed
}

/// The answer to one `cut`: an outcome, or why there is none.
public enum HoldAnswer: Sendable, Equatable {
    case outcome(HoldOutcome)
    case failed(LeaseFailure)
}

/// Names one waiting caller (a reservation or a flush); chosen by whoever sends the event.
public struct LeaseTicket: Hashable, Sendable, Comparable {
    public let value: UInt64

    public init(_ value: UInt64) { self.value = value }

    public static func < (lhs: LeaseTicket, rhs: LeaseTicket) -> Bool { lhs.value < rhs.value }
}

/// What a refill granted for one account.
public struct LeaseGrant: Sendable, Equatable {
    public enum State: String, Sendable {
        /// `unknown`: no such user or token; `unlimited`: a token that does not limit (nothing
        /// to lease); `exhausted`: a limited token with `remain_quota <= 0`.
        case ok, unknown, unlimited, exhausted
    }

    public let account: LeaseAccount
    public let granted: Int64
    public let state: State
    /// Units other instances hold leased of the account (asked back when this grant fell short).
    public let others: Int64

    public init(account: LeaseAccount, granted: Int64, state: State, others: Int64) {
        self.account = account
        self.granted = granted
        self.state = state
        self.others = others
    }
}

/// A hold cut from a lease, on its way to the journal.
public struct JournaledHold: Sendable, Equatable {
    public let id: Int64
    public let request: HoldRequest
    /// The amount was also cut from the (limited) token's lease.
    public let tokenLeased: Bool

    public init(id: Int64, request: HoldRequest, tokenLeased: Bool) {
        self.id = id
        self.request = request
        self.tokenLeased = tokenLeased
    }
}

/// What the journal found for a hold: the hold stored under its request id (this one, or an
/// earlier one when the request id had been authorized before, for this scope or another).
public struct JournalOutcome: Sendable, Equatable {
    public let holdID: Int64
    public let held: Int64
    public let status: String
    /// What the stored hold was authorized for.
    public let scope: RequestScope
    public let isNew: Bool

    public init(holdID: Int64, held: Int64, status: String, scope: RequestScope, isNew: Bool) {
        self.holdID = holdID
        self.held = held
        self.status = status
        self.scope = scope
        self.isNew = isNew
    }
}
