/// An API key's IP allow-list: IPv4 and IPv6 addresses and CIDR ranges (DESIGN §5, §6).
///
/// Written by users as one string, entries separated by commas, newlines or spaces (new-api
/// keeps newline-separated text). Parsing is strict and every refusal names the bad entry:
/// octets with leading zeros, prefixes out of range, a range with host bits set (`10.0.0.1/8`
/// is refused with the network it probably meant), IPv6 zone ids. The stored form is the
/// canonical text of each entry (RFC 5952 for IPv6), one per line.
public struct IPAllowList: Sendable, Equatable {
    public let ranges: [IPRange]

    /// At most this many entries per key.
    public static let maximumEntries = 100

    public init(ranges: [IPRange]) { self.ranges = ranges }

    /// Parses the user's text; an empty or blank text is the empty list (any IP allowed).
    public static func parse(_ text: String) throws(IPParseError) -> IPAllowList {
        let entries = text.split(whereSeparator: {
            $0 == "," || $0 == "\n" || $0 == "\r" || $0 == " " || $0 == "\t" || $0 == ";"
        })
        .map(String.init)
        guard entries.count <= maximumEntries else {
            throw IPParseError(entry: "", reason: "at most \(maximumEntries) entries are allowed, got \(entries.count)")
        }
        var ranges: [IPRange] = []
        for entry in entries {
            let range = try IPRange.parse(entry)
            if !ranges.contains(range) { ranges.append(range) }
        }
        return IPAllowList(ranges: ranges)
    }

    /// True when no range is set (every address allowed).
    public var isEmpty: Bool { ranges.isEmpty }

    /// The canonical text, one entry per line ("" when empty).
    public var text: String { ranges.map(\.description).joined(separator: "\n") }

    /// True when `address` (text) is inside one of the ranges; an unparseable address is never
    /// allowed by a non-empty list.
    public func allows(_ address: String) -> Bool {
        if ranges.isEmpty { return true }
        guard let ip = IPAddress.parse(address) else { return false }
        return ranges.contains { $0.contains(ip) }
    }
}

/// Why an allow-list entry was refused; `description` is a complete sentence for the caller.
public struct IPParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public let entry: String
    public let reason: String

    public var description: String {
        entry.isEmpty ? "allow_ips: \(reason)" : "allow_ips: \"\(entry.prefix(64))\" \(reason)"
    }
}

/// One IPv4 or IPv6 address, as its 4 or 16 bytes.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]
    public var isIPv4: Bool { bytes.count == 4 }

    /// Parses dotted IPv4 or textual IPv6 (with `::` and an embedded IPv4 tail); nil otherwise.
    public static func parse(_ text: String) -> IPAddress? {
        if text.contains(":") { return parseIPv6(Substring(text)).map { IPAddress(bytes: $0) } }
        return parseIPv4(Substring(text)).map { IPAddress(bytes: $0) }
    }

    /// The network one client is taken to hold: an IPv4 address itself (an IPv4-mapped one as
    /// IPv4), an IPv6 address its /64 — a host is normally given a whole /64, and counting its
    /// addresses one by one would give it 2^64 times any per-address limit.
    public var clientNetwork: String {
        if let mapped = mappedIPv4 { return mapped.description }
        guard bytes.count == 16 else { return description }
        return IPAddress(bytes: Array(bytes.prefix(8)) + Array(repeating: 0, count: 8)).description + "/64"
    }

    /// The IPv4 address of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), else nil.
    var mappedIPv4: IPAddress? {
        guard bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff else {
            return nil
        }
        return IPAddress(bytes: Array(bytes[12..<16]))
    }

    public var description: String {
        if isIPv4 { return bytes.map(String.init).joined(separator: ".") }
        if let mapped = mappedIPv4 { return "::ffff:\(mapped)" }
        // RFC 5952: lowercase hex, no leading zeros, the longest run (≥ 2) of zero groups as "::".
        let groups = stride(from: 0, to: 16, by: 2).map { UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]) }
        var bestStart = -1, bestLength = 0, index = 0
        while index < 8 {
            guard groups[index] == 0 else { index += 1; continue }
            var end = index
            while end < 8, groups[end] == 0 { end += 1 }
            if end - index > bestLength { bestStart = index; bestLength = end - index }
            index = end
        }
        if bestLength < 2 { return groups.map { String($0, radix: 16) }.joined(separator: ":") }
        let head = groups[0..<bestStart].map { String($0, radix: 16) }.joined(separator: ":")
        let tail = groups[(bestStart + bestLength)...].map { String($0, radix: 16) }.joined(separator: ":")
        return head + "::" + tail
    }

    static func parseIPv4(_ text: Substring) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy({ $0.isASCII && $0.isNumber }),
                part.count == 1 || part.first != "0", let value = UInt8(part)
            else { return nil }
            bytes.append(value)
        }
        return bytes
    }

    static func parseIPv6(_ text: Substring) -> [UInt8]? {
        guard !text.contains("%") else { return nil }
        let halves = text.components(separatedBy: "::")
        guard halves.count <= 2 else { return nil }
        func groups(_ part: String, allowIPv4Tail: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            var result: [UInt16] = []
            for (offset, piece) in pieces.enumerated() {
                if allowIPv4Tail, offset == pieces.count - 1, piece.contains(".") {
                    guard let v4 = parseIPv4(piece) else { return nil }
                    result.append(UInt16(v4[0]) << 8 | UInt16(v4[1]))
                    result.append(UInt16(v4[2]) << 8 | UInt16(v4[3]))
                    continue
                }
                guard (1...4).contains(piece.count), piece.allSatisfy(\.isHexDigit),
                    let value = UInt16(piece, radix: 16)
                else { return nil }
                result.append(value)
            }
            return result
        }
        var all: [UInt16]
        if halves.count == 2 {
            guard let head = groups(halves[0], allowIPv4Tail: false), let tail = groups(halves[1], allowIPv4Tail: true),
                head.count + tail.count <= 7
            else { return nil }
            all = head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        } else {
            guard let only = groups(halves[0], allowIPv4Tail: true), only.count == 8 else { return nil }
            all = only
        }
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xff)] }
    }
}

/// A network: an address and a prefix length (a single address is /32 or /128).
public struct IPRange: Sendable, Hashable, CustomStringConvertible {
    public let network: IPAddress
    public let prefixLength: Int

    public static func parse(_ entry: String) throws(IPParseError) -> IPRange {
        guard entry.utf8.count <= 64 else {
            throw IPParseError(entry: entry, reason: "is too long for an IP address or CIDR range")
        }
        let parts = entry.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress.parse(String(parts[0])) else {
            if entry.contains("%") {
                throw IPParseError(
                    entry: entry, reason: "is not allowed: IPv6 zone ids cannot be used in an allow-list")
            }
            throw IPParseError(entry: entry, reason: "is not an IPv4 or IPv6 address or CIDR range")
        }
        let bits = address.bytes.count * 8
        var prefix = bits
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].count <= 3, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
                let value = Int(parts[1]), value <= bits
            else {
                throw IPParseError(
                    entry: entry,
                    reason: "has an invalid prefix length (0…\(bits) for \(address.isIPv4 ? "IPv4" : "IPv6"))")
            }
            prefix = value
        }
        let masked = IPRange.mask(address, prefix)
        guard masked == address else {
            throw IPParseError(entry: entry, reason: "has host bits set; the network is \(masked)/\(prefix)")
        }
        return IPRange(network: address, prefixLength: prefix)
    }

    /// An IPv4 address and its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) are one address, as
    /// for new-api (Go's `net.IP`): either form of the client matches either form of a range.
    public func contains(_ address: IPAddress) -> Bool {
        var address = address
        if network.isIPv4, !address.isIPv4, let mapped = address.mappedIPv4 { address = mapped }
        if !network.isIPv4, address.isIPv4, prefixLength >= 96, network.mappedIPv4 != nil {
            address = IPAddress(bytes: Array(repeating: 0, count: 10) + [0xff, 0xff] + address.bytes)
        }
        guard address.bytes.count == network.bytes.count else { return false }
        return IPRange.mask(address, prefixLength) == network
    }

    public var description: String {
        prefixLength == network.bytes.count * 8 ? network.description : "\(network)/\(prefixLength)"
    }

    static func mask(_ address: IPAddress, _ prefix: Int) -> IPAddress {
        var bytes = address.bytes
        for index in bytes.indices {
            let keep = max(0, min(8, prefix - index * 8))
            bytes[index] &= keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - keep))
        }
        return IPAddress(bytes: bytes)
    }
}
