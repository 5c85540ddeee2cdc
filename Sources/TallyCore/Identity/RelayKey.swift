/// A relay key as a client sends it and the gateway passes it on: `[Bearer ]sk-KEY[-CHANNEL…]`.
/// The key is stored as `sk-` + KEY; new-api reads the part after KEY's first `-` (up to the
/// next) as a channel an admin pins, and refuses anyone else who sends one.
public struct RelayKey: Sendable, Equatable {
    /// The key as stored: `sk-` + KEY.
    public let secret: String
    /// The channel pinned after KEY, as sent (not necessarily a number); nil without a `-`.
    public let channelPin: Substring?

    /// nil when no key is left once the scheme, the `sk-` prefix and the pin are taken off.
    /// Cut at `-` bytes, as new-api's `strings.Split` does (and without the grapheme breaking of
    /// a `Character` walk, which cost a tenth of the server's CPU per ingested line).
    public init?(_ header: String) {
        guard var key = BearerCredential.value(of: header) else { return nil }
        let dash = UInt8(ascii: "-")
        if key.utf8.starts(with: "sk-".utf8) { key = key[key.utf8.index(key.startIndex, offsetBy: 3)...] }
        var pin: Substring?
        if let cut = key.utf8.firstIndex(of: dash) {
            let rest = key[key.utf8.index(after: cut)...]
            pin = rest[..<(rest.utf8.firstIndex(of: dash) ?? rest.endIndex)]
            key = key[..<cut]
        }
        guard !key.isEmpty else { return nil }
        secret = "sk-" + key
        channelPin = pin
    }
}
