import Foundation
import HTTPTypes
import Hummingbird
import Synchronization
import TallyCore

/// A credential the caller presented was wrong (unknown or revoked key, access token or gateway
/// secret). Thrown by the authenticators instead of their `APIError` so `FailedAuthMiddleware`
/// can count it against the client's address; it is answered as `error`.
///
/// Only the caller's own credential counts: an end user's key that `authorize` refuses on the
/// gateway's behalf is an answer, not a failed login of the gateway.
public struct CredentialRejected: Error, Sendable {
    public let error: APIError

    public init(_ error: APIError) { self.error = error }
}

/// Counts failed credentials per client IP in fixed windows: after `limit` failures within
/// `window`, every request from that address is answered `429 too_many_failed_auth` (with a
/// tid and `Retry-After`) until the window ends. Guessing keys or tokens from one address is
/// thereby capped at `limit` tries per window and count (``FailedAuthMiddleware/bucket(_:_:)``:
/// credentials in headers, keys in the URL, the gateway's secret).
public final class FailedAuthLimiter: Sendable {
    public let limit: Int
    public let window: Duration
    /// Addresses tracked at once; beyond it, expired windows are dropped, then the oldest half.
    public let capacity: Int
    private let windows = Mutex<[String: (start: ContinuousClock.Instant, failures: Int)]>([:])
    /// The end of the latest window that reached the limit, in nanoseconds after `origin`: before
    /// it some address may be blocked; after it none is, and `mayBlock` spares every request
    /// the address parsing and the lock (measured at ~3 % of the server's CPU per authorization).
    private let blockedUntil = Atomic<Int64>(.min)
    private let origin = ContinuousClock.now

    public init(limit: Int, window: Duration, capacity: Int = 100_000) {
        self.limit = limit
        self.window = window
        self.capacity = capacity
    }

    /// False when no address can be blocked at `now`: no window that reached the limit lasts
    /// until then.
    public func mayBlock(now: ContinuousClock.Instant = .now) -> Bool {
        nanoseconds(at: now) < blockedUntil.load(ordering: .acquiring)
    }

    /// How long `address` stays blocked, or nil when it may try.
    public func blockedFor(_ address: String, now: ContinuousClock.Instant = .now) -> Duration? {
        windows.withLock { windows in
            guard let entry = windows[address] else { return nil }
            let end = entry.start + window
            if now >= end {
                windows[address] = nil
                return nil
            }
            return entry.failures >= limit ? end - now : nil
        }
    }

    /// Counts one failed credential from `address`.
    public func recordFailure(_ address: String, now: ContinuousClock.Instant = .now) {
        windows.withLock { windows in
            var entry = (start: now, failures: 1)
            if let counted = windows[address], now < counted.start + window {
                entry = (counted.start, counted.failures + 1)
            } else if windows.count >= capacity {
                evict(&windows, now: now)
            }
            windows[address] = entry
            if entry.failures >= limit { extendBlocking(until: entry.start + window) }
        }
    }

    /// Called under the lock, so the maximum needs no compare-and-swap loop.
    private func extendBlocking(until end: ContinuousClock.Instant) {
        let nanos = nanoseconds(at: end)
        if nanos > blockedUntil.load(ordering: .relaxed) { blockedUntil.store(nanos, ordering: .releasing) }
    }

    private func nanoseconds(at instant: ContinuousClock.Instant) -> Int64 {
        let (seconds, attoseconds) = (instant - origin).components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    private func evict(
        _ windows: inout [String: (start: ContinuousClock.Instant, failures: Int)], now: ContinuousClock.Instant
    ) {
        windows = windows.filter { now < $0.value.start + window }
        guard windows.count >= capacity else { return }
        let oldest = windows.sorted { $0.value.start < $1.value.start }.prefix(windows.count / 2).map(\.key)
        for address in oldest { windows[address] = nil }
    }
}

/// Applies `FailedAuthLimiter` to every route: refuses requests that carry a credential from a
/// blocked address before any work, and counts each `CredentialRejected` thrown further in. The
/// client address is the one `ClientAddressMiddleware` found (X-Forwarded-For only from trusted
/// proxies). The gateway's secret (`/gateway/…`) and the clients' credentials (keys, access
/// tokens, codes) are counted apart: clients' bad keys arriving from the gateway's address (one
/// proxy in front of both) cannot lock the gateway out of billing, nor can guesses of the
/// secret lock out the clients; each is still refused unread once its own count is reached.
public struct FailedAuthMiddleware: RouterMiddleware {
    public typealias Context = TallyRequestContext
    let limiter: FailedAuthLimiter?

    public init(limiter: FailedAuthLimiter?) {
        self.limiter = limiter
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        // The bucket is worked out only where it is needed: most requests carry no credential
        // (health checks, pricing) or a right one.
        let bucket = { context.clientAddress.map { Self.bucket($0, request) } }
        if let limiter, limiter.mayBlock(), Self.presentsCredential(request), let address = bucket(),
            let wait = limiter.blockedFor(address)
        {
            let seconds = max(1, Int(wait.components.seconds) + (wait.components.attoseconds > 0 ? 1 : 0))
            var response = ErrorMiddleware.response(for: .tooManyFailedAuth(), path: request.uri.path, tid: context.tid)
            response.headers[.retryAfter] = String(seconds)
            return response
        }
        do {
            return try await next(request, context)
        } catch {
            guard let rejected = error as? CredentialRejected else { throw error }
            if let limiter, let address = bucket() { limiter.recordFailure(address) }
            throw rejected.error
        }
    }

    /// What failures of `request` count towards: its client's network (an IPv6 client's /64),
    /// apart for the gateway's routes, and apart for a key sent in the URL alone
    /// (`GET /v1/models?key=`). That one any web page can make its visitor's browser send (an
    /// image's address), so its failures must not lock the visitor's address out of the console
    /// and the API, which send credentials in headers (found by a review of the console).
    static func bucket(_ address: String, _ request: Request) -> String {
        let network = IPAddress.parse(address)?.clientNetwork ?? address
        if ErrorEnvelope.firstSegment(of: request.uri.path) == "gateway" { return "gateway " + network }
        return APIKeyAuthenticator.keyInURLOnly(of: request) ? "url " + network : network
    }

    /// Requests without a credential (health checks, public pricing) guess nothing: never blocked.
    static func presentsCredential(_ request: Request) -> Bool {
        APIKeyAuthenticator.keyFields(of: request).contains { $0 != nil }
    }
}

extension APIError {
    /// 429: too many failed credentials from this address; not a catalog entry.
    static func tooManyFailedAuth() -> APIError {
        APIError(
            status: 429, code: "too_many_failed_auth",
            message: "Too many failed authentication attempts from this address; try again later.")
    }
}
