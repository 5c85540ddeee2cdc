/// Trace ids ("tids"): 32 lowercase hex characters, taken from the caller when it sends one.
public enum TraceID {
    /// A fresh random tid, from the pool of system random bytes (every request that sends none
    /// gets one: two `getrandom` calls per tid were ~2 % of the server's CPU per request).
    public static func generate() -> String {
        let (high, low) = RandomPool.shared.next128()
        return hex(high, low)
    }

    /// 32 lowercase hex characters of `high` then `low`, most significant digit first.
    public static func hex(_ high: UInt64, _ low: UInt64) -> String {
        String(unsafeUninitializedCapacity: 32) { text in
            for (offset, word) in [(0, high), (16, low)] {
                for digit in 0..<16 {
                    let nibble = UInt8(truncatingIfNeeded: word >> UInt64(60 - 4 * digit)) & 0xF
                    text[offset + digit] = nibble < 10 ? 48 + nibble : 87 + nibble
                }
            }
            return 32
        }
    }

    /// The tid for a request: the trace id of a valid W3C `traceparent`, else a valid `X-Tid`
    /// (32 hex characters, lowercased), else a new one. Anything else is ignored, never echoed.
    public static func resolve(traceparent: String?, xTid: String?) -> String {
        if let traceparent, let traceID = fromTraceparent(traceparent) { return traceID }
        if let xTid, isValid(xTid.lowercased()) { return xTid.lowercased() }
        return generate()
    }

    /// `version-traceid-parentid-flags`, e.g. `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    static func fromTraceparent(_ header: String) -> String? {
        let parts = header.trimmingSpaces().split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0].count == 2, parts[0] != "ff" else { return nil }
        let traceID = String(parts[1])
        guard isValid(traceID), traceID != String(repeating: "0", count: 32) else { return nil }
        return traceID
    }

    /// True for exactly 32 lowercase hex characters.
    public static func isValid(_ text: String) -> Bool {
        // Over the contiguous bytes: every ingested line's tid is checked.
        var text = text
        return text.withUTF8 { $0.count == 32 && $0.allSatisfy { (48...57).contains($0) || (97...102).contains($0) } }
    }
}

extension String {
    func trimmingSpaces() -> String {
        String(self.drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
