/// A requests-per-minute counter with a sliding window: the previous minute's count, weighted
/// by how much of it still overlaps the last 60 seconds, plus the current minute's count
/// (the approximation Cloudflare and Envoy use; it never lets more than `limit` through in any
/// aligned minute and smooths the boundary burst of fixed windows).
public struct SlidingWindowCounter: Sendable, Equatable {
    private var minute: Int64 = .min
    private var current: Int = 0
    private var previous: Int = 0

    /// An empty counter.
    public init() {}

    /// Counts one request at `now` (seconds since any fixed epoch) if fewer than `limit` are in
    /// the window; returns false (and counts nothing) when the limit is reached. Give it a clock
    /// that never steps back (``RateLimiter`` does): a `now` older than the newest minute counted
    /// (read just before another caller counted) counts at that minute's start, where, taken as
    /// a new minute, it would forget every request counted since.
    public mutating func tryAcquire(limit: Int, now: Double) -> Bool {
        let now = max(now, Double(minute) * 60)
        let thisMinute = Int64((now / 60).rounded(.down))
        if thisMinute != minute {
            previous = thisMinute == minute + 1 ? current : 0
            current = 0
            minute = thisMinute
        }
        let elapsed = now / 60 - Double(thisMinute)
        let inWindow = Double(previous) * (1 - elapsed) + Double(current)
        guard inWindow < Double(limit) else { return false }
        current += 1
        return true
    }

    /// True when the counter has seen nothing for two minutes (it can be forgotten).
    public func isIdle(now: Double) -> Bool {
        Int64((now / 60).rounded(.down)) > minute + 1
    }
}
