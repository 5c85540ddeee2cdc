import Foundation
import TallyCore
import TallyStore

/// A granted authorization.
public struct AuthorizeGrant: Sendable, Equatable {
    public let holdID: Int64
    public let userID: Int64
    public let tokenID: Int64
    public let group: String
    public let held: Int64
    /// False when the request id had been authorized before (a retry): this is that hold.
    public let isNew: Bool
}

/// Decides `authorize`: the checks of DESIGN §5 in order, each failing with its catalog entry,
/// then a hold cut from this instance's leases by ``HoldBook``. Reads only memory on the way
/// (keys, channels, prices, rate counters, leases); PostgreSQL is asked only to refill a lease.
public final class Authorizer: Sendable {
    /// Longest request id accepted (new-api's ids are 32–40 characters; UUIDs 36).
    public static let maximumRequestIDLength = 128

    private let directory: AccessDirectory
    private let prices: PriceCatalog
    private let holds: HoldBook
    private let limiter: RateLimiter

    public init(directory: AccessDirectory, prices: PriceCatalog, holds: HoldBook, limiter: RateLimiter) {
        self.directory = directory
        self.prices = prices
        self.holds = holds
        self.limiter = limiter
    }

    /// Authorizes `request` or throws the `APIError` of the first check it fails.
    public func authorize(_ request: AuthorizeRequest, tid: String, now: Date = Date()) async throws -> AuthorizeGrant {
        var started = AuthorizeMetrics.now()
        guard let key = request.key.flatMap(RelayKey.init) else { throw APIError(.missingToken) }
        guard let access = try await directory.key(SecretHash(of: key.secret), now: now, leasing: holds.lookupLease()),
            access.tokenEnabled,
            !(access.expiresAt.map { TokenRules.hasExpired($0, now: now) } ?? false)
        else { throw APIError(.invalidToken) }
        started = AuthorizeMetrics.record(.key, since: started)
        guard !access.userSuspended else { throw APIError(.accountSuspended) }
        let last6 = access.keyLast6
        try await checkChannel(request.channelID, pinned: key.channelPin, access: access, now: now)
        guard let allowList = access.allowIPs, allowList.allows(request.ip ?? "") else {
            throw APIError(.ipNotAllowed, last6: last6)
        }
        // The key's group is still its owner's to use (new-api checks it on every request).
        guard access.groupUsable else { throw APIError(.insufficientPermissions) }
        let model = request.model ?? ""
        if let allowed = access.allowedModels, !ModelNames.limitsAllow(allowed, model) {
            throw APIError(.modelNotAllowed, last6: last6)
        }
        // Without a price version in force nothing is available, but the key's own model limit
        // above comes first (DESIGN §5's order).
        guard let sheet = prices.book.version(at: now)?.sheet else { throw APIError(.modelNotAvailable) }
        if let groupModels = sheet.groups[access.group]?.models, !groupModels.contains(model) {
            throw APIError(.modelNotAllowed, last6: last6)
        }
        guard let price = sheet.models[model], sheet.isAvailable(model: model, group: access.group),
            try await directory.channels(now: now).modelsByGroup[access.group]?.contains(model) == true
        else { throw APIError(.modelNotAvailable) }
        guard limiter.allow(access, model: model) else {
            // A retry of a request already held is answered with its hold, whatever the rate.
            if let requestID = Self.validRequestID(request.requestID),
                let stored = try await holds.storedHold(
                    requestID: requestID,
                    scope: RequestScope(userID: access.userID, tokenID: access.tokenID, model: model))
            {
                return try Self.answer(stored, access: access)
            }
            throw APIError(.rateLimited, model: model)
        }
        let usage = try HoldEstimator.usage(for: request.estimate ?? AuthorizeEstimate(), model: price).get()
        guard let requestID = Self.validRequestID(request.requestID) else {
            throw APIError.invalidRequest(
                "request_id is required: 1–\(Self.maximumRequestIDLength) bytes, no control characters.")
        }
        let amount: Int64
        do {
            amount = try rate(usage, model: model, group: access.group, sheet: sheet).units
        } catch {
            // The sheet prices the model but not this shape (an image size or video resolution
            // it has no price for).
            throw APIError(.sizeNotSupported)
        }
        let hold = HoldRequest(
            requestID: requestID, userID: access.userID, tokenID: access.tokenID, model: model,
            amount: amount, tid: tid)
        started = AuthorizeMetrics.record(.checks, since: started)
        let outcome = try await current(holds.reserve(hold), of: hold)
        AuthorizeMetrics.record(.hold, since: started)
        return try Self.answer(outcome, access: access)
    }

    /// A retry answered from the instance's memory says `held` for 10–20 s after its hold was
    /// released, settled or expired (elsewhere, too): what PostgreSQL holds says what it is now.
    /// Retries are rare, so the lookup (coalesced with the others in flight) costs little.
    private func current(_ outcome: HoldOutcome, of hold: HoldRequest) async throws -> HoldOutcome {
        guard case .duplicate(_, _, "held") = outcome else { return outcome }
        return try await holds.storedHold(requestID: hold.requestID, scope: hold.scope) ?? outcome
    }

    /// A request id names one request (``RequestScope``): a hold of another account, key or
    /// model is not its retry.
    public static let requestIDInUse = APIError.conflict(
        "This request_id is another request's (another account, key or model); give each request its own request_id.")

    /// The grant of a hold outcome, or the catalog error of a refusal.
    private static func answer(_ outcome: HoldOutcome, access: KeyAccess) throws -> AuthorizeGrant {
        func grant(_ holdID: Int64, _ held: Int64, isNew: Bool) -> AuthorizeGrant {
            AuthorizeGrant(
                holdID: holdID, userID: access.userID, tokenID: access.tokenID, group: access.group,
                held: held, isNew: isNew)
        }
        switch outcome {
        case .held(let holdID, let held): return grant(holdID, held, isNew: true)
        case .duplicate(let holdID, let held, "held"): return grant(holdID, held, isNew: false)
        case .duplicate(_, _, let status):
            // Its units are no longer reserved: answered as a retry, the request would run on
            // nothing (a settled one free, its log line a duplicate).
            throw APIError.conflict(
                "This request_id's hold is \(status) already; a new attempt needs a request_id of its own.")
        case .insufficient: throw APIError(.insufficientUserQuota)
        case .exhausted, .unknown: throw APIError(.invalidToken)
        case .requestIDInUse: throw requestIDInUse
        }
    }

    /// The request id when it is one: 1 to `maximumRequestIDLength` bytes, no control characters.
    static func validRequestID(_ requestID: String?) -> String? {
        guard let requestID, !requestID.isEmpty, requestID.utf8.count <= maximumRequestIDLength,
            !requestID.utf8.contains(where: { $0 < 0x20 || $0 == 0x7f })
        else { return nil }
        return requestID
    }

    /// Only admins may pick a channel: by `channel_id`, or, without one, by the key's
    /// `-CHANNEL` suffix (new-api's form; anyone else who sends one is refused, as there). The
    /// channel must exist and be enabled.
    private func checkChannel(_ channelID: Int64?, pinned: Substring?, access: KeyAccess, now: Date) async throws {
        guard channelID != nil || pinned != nil else { return }
        guard access.userRole >= .admin else { throw APIError(.channelNotPermitted, last6: access.keyLast6) }
        guard let id = channelID ?? pinned.flatMap({ Int64($0) }),
            let channel = try await directory.channels(now: now).channels[id]
        else { throw APIError(.invalidChannelID) }
        guard channel.enabled else { throw APIError(.channelDisabled) }
    }
}
