/// Splits a batch body into its lines while it arrives, chunk by chunk: NDJSON (blank lines
/// skipped, numbered as in the body) or a JSON array of objects (numbered by position). Only
/// the line in progress is kept between chunks; a line inside one chunk is handed out in place.
public struct LineSplitter {
    private enum Mode { case undecided, ndjson, array, closed }

    private var mode = Mode.undecided
    /// The line (or array element) begun in an earlier chunk; in `undecided`, the leading
    /// whitespace read so far.
    private var carry: [UInt8] = []
    /// NDJSON: the number of the line in progress − 1; array: elements handed out.
    private var number = 0
    private var depth = 0
    private var inString = false
    private var escaped = false
    /// The bytes of a UTF-8 byte order mark the body began with so far; nil once the body's
    /// start is known. A whole mark is skipped, as JSON readers skip it (a .NET or Notepad file).
    private var markRead: Int? = 0
    private static let byteOrderMark: [UInt8] = [0xEF, 0xBB, 0xBF]

    public typealias Emit = (_ number: Int, _ line: UnsafeBufferPointer<UInt8>) throws -> Void

    public init() {}

    public mutating func feed(_ chunk: UnsafeBufferPointer<UInt8>, _ emit: Emit) throws {
        switch mode {
        case .ndjson: try feedLines(chunk, emit)
        case .array: try feedArray(chunk, from: 0, emit)
        case .closed: try checkTrailing(chunk, from: 0)
        case .undecided:
            var from = 0
            if let read = markRead {
                var matched = read
                while from < chunk.count, matched < 3, chunk[from] == Self.byteOrderMark[matched] {
                    matched += 1
                    from += 1
                }
                if matched < 3, from == chunk.count {
                    markRead = matched
                    return
                }
                markRead = nil
                if matched < 3, matched > 0 {
                    // A mark's first bytes and then something else: content, a line of its own.
                    mode = .ndjson
                    carry = Array(Self.byteOrderMark[..<matched])
                    return try feedLines(UnsafeBufferPointer(rebasing: chunk[from...]), emit)
                }
            }
            let chunk = UnsafeBufferPointer(rebasing: chunk[from...])
            guard let first = chunk.firstIndex(where: { !$0.isJSONWhitespace }) else {
                carry.append(contentsOf: chunk)
                return
            }
            if chunk[first] == UInt8(ascii: "[") {
                mode = .array
                carry.removeAll()
                depth = 1
                try feedArray(chunk, from: first + 1, emit)
            } else {
                mode = .ndjson
                let leading = carry
                carry.removeAll()
                try leading.withUnsafeBufferPointer { try feedLines($0, emit) }
                try feedLines(chunk, emit)
            }
        }
    }

    /// The end of the body: the last NDJSON line (without a final newline), or an error for an
    /// array that was never closed.
    public mutating func finish(_ emit: Emit) throws {
        if mode == .undecided, let read = markRead, read > 0, read < 3 {
            // The body is the first bytes of a mark: one line of content.
            carry = Array(Self.byteOrderMark[..<read])
            mode = .ndjson
        }
        if mode == .undecided {
            // Nothing but whitespace: blank NDJSON lines.
            mode = .ndjson
            let leading = carry
            carry.removeAll()
            try leading.withUnsafeBufferPointer { try feedLines($0, emit) }
        }
        switch mode {
        case .undecided, .ndjson:
            number += 1
            let last = carry
            carry.removeAll()
            try last.withUnsafeBufferPointer { try emitLine($0, emit) }
        case .array: throw BatchMalformed(description: "the batch array is not closed")
        case .closed: break
        }
    }

    private mutating func feedLines(_ chunk: UnsafeBufferPointer<UInt8>, _ emit: Emit) throws {
        var start = 0
        for index in chunk.indices where chunk[index] == 0x0A {
            number += 1
            let piece = UnsafeBufferPointer(rebasing: chunk[start..<index])
            if carry.isEmpty {
                try emitLine(piece, emit)
            } else {
                carry.append(contentsOf: piece)
                let line = carry
                carry.removeAll(keepingCapacity: true)
                try line.withUnsafeBufferPointer { try emitLine($0, emit) }
            }
            start = index + 1
        }
        carry.append(contentsOf: UnsafeBufferPointer(rebasing: chunk[start...]))
    }

    /// A line without its `\r\n` ending; lines of nothing but spaces and tabs are skipped.
    private func emitLine(_ line: UnsafeBufferPointer<UInt8>, _ emit: Emit) throws {
        var end = line.count
        if end > 0, line[end - 1] == 0x0D { end -= 1 }
        let trimmed = UnsafeBufferPointer(rebasing: line[..<end])
        if trimmed.contains(where: { $0 != 0x20 && $0 != 0x09 }) { try emit(number, trimmed) }
    }

    /// Top-level elements, found by tracking depth and strings across chunks.
    private mutating func feedArray(_ chunk: UnsafeBufferPointer<UInt8>, from first: Int, _ emit: Emit) throws {
        var segment = first
        var index = first
        while index < chunk.count {
            let byte = chunk[index]
            index += 1
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"): depth += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth -= 1
                if depth == 0 {
                    try endElement(chunk, segment..<index - 1, emit)
                    mode = .closed
                    try checkTrailing(chunk, from: index)
                    return
                }
            case UInt8(ascii: ","):
                if depth == 1 {
                    try endElement(chunk, segment..<index - 1, emit)
                    segment = index
                }
            default: break
            }
        }
        carry.append(contentsOf: UnsafeBufferPointer(rebasing: chunk[segment...]))
    }

    /// Hands out the element that ends with `tail`, trimmed; an empty first element is none
    /// (`[]`), a later empty one is handed out (and rejected as not JSON).
    private mutating func endElement(_ chunk: UnsafeBufferPointer<UInt8>, _ tail: Range<Int>, _ emit: Emit) throws {
        carry.append(contentsOf: UnsafeBufferPointer(rebasing: chunk[tail]))
        let element = carry
        carry.removeAll(keepingCapacity: true)
        var lower = element.startIndex, upper = element.endIndex
        while lower < upper, element[lower].isJSONWhitespace { lower += 1 }
        while upper > lower, element[upper - 1].isJSONWhitespace { upper -= 1 }
        guard lower < upper || number > 0 else { return }
        number += 1
        try element.withUnsafeBufferPointer { try emit(number, UnsafeBufferPointer(rebasing: $0[lower..<upper])) }
    }

    private func checkTrailing(_ chunk: UnsafeBufferPointer<UInt8>, from start: Int) throws {
        guard chunk[start...].allSatisfy(\.isJSONWhitespace) else {
            throw BatchMalformed(description: "text after the closing ] of the batch array")
        }
    }
}

/// The batch body itself is not NDJSON or a JSON array (400).
public struct BatchMalformed: Error, Sendable, CustomStringConvertible {
    public let description: String

    public init(description: String) {
        self.description = description
    }
}
