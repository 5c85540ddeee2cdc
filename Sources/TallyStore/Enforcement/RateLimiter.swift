import Foundation
import Synchronization
import TallyCore

/// Requests-per-minute limits of this instance, in memory (DESIGN §5): per key, and per
/// user × model. With several instances each counts what it sees; routing a key to one
/// instance (nginx `hash` on the key, ops/deploy) makes the per-key limit exact.
public final class RateLimiter: Sendable {
    private enum Subject: Hashable {
        case key(Int64)
        case userModel(Int64, String)
    }

    private let counters = Mutex<[Subject: SlidingWindowCounter]>([:])
    private let calls = Atomic<Int>(0)

    public init() {}

    /// Counts one request of `access` for `model`; false when a limit is reached (then nothing
    /// is counted). `now` is read from a monotonic clock when the request is counted: the wall
    /// clock may step back (an NTP step), and a time read before the request waited on a lookup
    /// lags those counted meanwhile.
    public func allow(_ access: KeyAccess, model: String, now: Double = RateLimiter.monotonicSeconds()) -> Bool {
        guard access.keyRPM != nil || access.userModelRPM != nil else { return true }
        if calls.add(1, ordering: .relaxed).newValue % 100_000 == 0 { forgetIdle(now: now) }
        return counters.withLock { counters in
            var key = counters[.key(access.tokenID)] ?? SlidingWindowCounter()
            var userModel = counters[.userModel(access.userID, model)] ?? SlidingWindowCounter()
            // Both must pass before either counts.
            var keyProbe = key, userModelProbe = userModel
            guard access.keyRPM.map({ keyProbe.tryAcquire(limit: $0, now: now) }) ?? true,
                access.userModelRPM.map({ userModelProbe.tryAcquire(limit: $0, now: now) }) ?? true
            else { return false }
            if access.keyRPM != nil { key = keyProbe; counters[.key(access.tokenID)] = key }
            if access.userModelRPM != nil {
                userModel = userModelProbe; counters[.userModel(access.userID, model)] = userModel
            }
            return true
        }
    }

    private static let origin = ContinuousClock.now

    /// Seconds on a clock that never steps back, from the first reading in this process.
    public static func monotonicSeconds() -> Double {
        seconds(since: { Self.origin }, now: { ContinuousClock.now })
    }

    /// Seconds from `origin` to `now`, the origin read first: read after the clock, the first
    /// reading (the lazy origin set then) came out just below 0, in minute -1, and the next
    /// minute's counts gave that request only the weight of a previous minute's, so the limit
    /// let one more through.
    static func seconds(since origin: () -> ContinuousClock.Instant, now: () -> ContinuousClock.Instant) -> Double {
        let start = origin()
        let elapsed = (now() - start).components
        return Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
    }

    private func forgetIdle(now: Double) {
        counters.withLock { counters in counters = counters.filter { !$0.value.isIdle(now: now) } }
    }
}
