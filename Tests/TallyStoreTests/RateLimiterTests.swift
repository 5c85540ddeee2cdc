import Foundation
import Testing

@testable import TallyStore

@Suite("requests-per-minute limits")
struct RateLimiterTests {
    static func access(keyRPM: Int?, userModelRPM: Int?, token: Int64 = 1, user: Int64 = 1) -> KeyAccess {
        KeyAccess(
            tokenID: token, userID: user, keyLast6: "abcdef", tokenEnabled: true, expiresAt: nil,
            userSuspended: false, userRole: .user, group: "default", allowedModels: nil, allowIPs: nil,
            keyRPM: keyRPM, userModelRPM: userModelRPM, groupUsable: true)
    }

    @Test("a user's limit per model: that many in a minute, per model, whichever key")
    func perUserAndModel() {
        let limiter = RateLimiter()
        let first = Self.access(keyRPM: nil, userModelRPM: 2, token: 1)
        let second = Self.access(keyRPM: nil, userModelRPM: 2, token: 2)
        #expect(limiter.allow(first, model: "a", now: 1))
        #expect(limiter.allow(second, model: "a", now: 2))
        #expect(!limiter.allow(first, model: "a", now: 3))
        #expect(limiter.allow(first, model: "b", now: 4))
    }

    /// Found while testing the limits over HTTP: the process's first reading came out below 0 (the
    /// lazy origin was set after the clock was read), so the first request counted in minute -1 and
    /// a limit of 2 let a third through. The origin here is set on its first read, as the static is.
    @Test("the limits' clock never reads below 0, the reading that sets its origin included")
    func clockStartsAtZero() {
        var origin: ContinuousClock.Instant?
        let first = RateLimiter.seconds(
            since: {
                if origin == nil { origin = ContinuousClock.now }
                return origin!
            }, now: { ContinuousClock.now })
        #expect(first >= 0)
        #expect(RateLimiter.monotonicSeconds() >= 0)
    }

    @Test("a key's limit, and both limits must pass before either counts")
    func perKey() {
        let limiter = RateLimiter()
        let access = Self.access(keyRPM: 1, userModelRPM: 5)
        #expect(limiter.allow(access, model: "a", now: 1))
        #expect(!limiter.allow(access, model: "b", now: 2))
        // The refusal counted nothing for the user's model "b": four more pass once the key may.
        let wide = Self.access(keyRPM: nil, userModelRPM: 5)
        for second in 3...7 { #expect(limiter.allow(wide, model: "b", now: Double(second))) }
        #expect(!limiter.allow(wide, model: "b", now: 8))
    }
}
