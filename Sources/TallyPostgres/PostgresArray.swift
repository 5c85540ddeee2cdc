/// Array parameters in PostgreSQL's text input format (`{1,2,3}`, `{"a","b"}`), so that one
/// statement can carry a whole batch. Built as bytes: the journal and the settlement of holds
/// build several of these per batch, one element per hold or log line.
public enum PostgresArray {
    public static func integers(_ values: [Int64]) -> String {
        var literal: [UInt8] = []
        literal.reserveCapacity(2 + values.count * 8)
        literal.append(UInt8(ascii: "{"))
        for (index, value) in values.enumerated() {
            if index > 0 { literal.append(UInt8(ascii: ",")) }
            ASCIIDecimal.append(value, to: &literal)
        }
        literal.append(UInt8(ascii: "}"))
        return String(decoding: literal, as: UTF8.self)
    }

    /// Every element quoted, with `"` and `\` escaped (so `NULL`, commas, braces and spaces
    /// stay text).
    public static func text(_ values: [String]) -> String {
        var literal: [UInt8] = []
        literal.reserveCapacity(2 + values.reduce(0) { $0 + $1.utf8.count + 3 })
        literal.append(UInt8(ascii: "{"))
        for (index, value) in values.enumerated() {
            if index > 0 { literal.append(UInt8(ascii: ",")) }
            appendQuoted(value, to: &literal)
        }
        literal.append(UInt8(ascii: "}"))
        return String(decoding: literal, as: UTF8.self)
    }

    /// `"value"` with a backslash before each `"` and `\`; runs without one are appended whole.
    private static func appendQuoted(_ value: String, to literal: inout [UInt8]) {
        var value = value
        literal.append(UInt8(ascii: "\""))
        value.withUTF8 { utf8 in
            var runStart = 0
            for (index, byte) in utf8.enumerated() where byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
                literal.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<index]))
                literal.append(UInt8(ascii: "\\"))
                runStart = index
            }
            literal.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart...]))
        }
        literal.append(UInt8(ascii: "\""))
    }
}

/// Integers as ASCII decimal digits, appended to a byte buffer without an intermediate string.
enum ASCIIDecimal {
    static func append(_ value: Int64, to bytes: inout [UInt8]) {
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        var magnitude = value.magnitude
        // Most counts of a COPY row are one digit (a chat line's images, calls, cached tokens …).
        guard magnitude >= 10 else { return bytes.append(UInt8(48 + magnitude)) }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // room for UInt64.max's 20 digits
        withUnsafeMutableBytes(of: &digits) { raw in
            let buffer = raw.bindMemory(to: UInt8.self)
            var start = buffer.count
            repeat {
                start -= 1
                buffer[start] = UInt8(48 + magnitude % 10)
                magnitude /= 10
            } while magnitude > 0
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[start...]))
        }
    }
}
