/// Which occurrences of a repeated warning earn a log line: the first of its kind, then at most
/// one every `interval`, which says how many were left out since the last one logged. While
/// PostgreSQL is down every request and every background tick fails the same way; a line for
/// each (thousands a second under load) buried the log, and the outage's first line with it.
///
/// Pure: the caller passes the time (seconds on any monotonic clock) and logs what it is told.
public struct RepeatedWarnings: Sendable {
    public let interval: Double
    /// Per kind: when its last line was logged, and how many were left out since. Kinds are a
    /// fixed set of messages, so this stays small.
    private var kinds: [String: (logged: Double, leftOut: Int)] = [:]

    public init(interval: Double = 10) {
        self.interval = interval
    }

    /// Nil when this occurrence of `kind` is to be left out; otherwise it is logged, saying that
    /// the returned number of occurrences were left out before it.
    public mutating func admit(_ kind: String, at now: Double) -> Int? {
        guard let last = kinds[kind], now - last.logged < interval else {
            let leftOut = kinds[kind]?.leftOut ?? 0
            kinds[kind] = (now, 0)
            return leftOut
        }
        kinds[kind] = (last.logged, last.leftOut + 1)
        return nil
    }
}
