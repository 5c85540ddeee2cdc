/// A relay key as a client sends it and the gateway passes it on: `[Bearer ]sk-KEY[-CHANNEL…]`.
/// The key is stored as `sk-` + KEY; new-api reads the part after KEY's first `-` (up to the
/// next) as a channel an admin pins, and refuses anyone else who sends one.
public struct RelayKey: Sendable, Equatable {
    /// The key as stored: `sk-` + KEY.
    public let secret: String
    /// The channel pinned after KEY, as sent (not necessarily a number); nil without a `-`.
    public let channelPin: Substring?

    /// nil when no key is left once the scheme, the `sk-` prefix and the pin are taken off.
    public init?(_ header: String) {
        guard var key = BearerCredential.value(of: header) else { return nil }
        if key.hasPrefix("sk-") { key = key.dropFirst(3) }
        var pin: Substring?
        if let dash = key.firstIndex(of: "-") {
            let rest = key[key.index(after: dash)...]
            pin = rest.prefix { $0 != "-" }
            key = key[..<dash]
        }
        guard !key.isEmpty else { return nil }
        secret = "sk-" + key
        channelPin = pin
    }
}
