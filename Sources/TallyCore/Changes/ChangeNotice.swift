/// One `tally_changes` notification: what changed, so every instance drops what it cached of it
/// (keys, channels) or gives back the lease it holds of an account. Sent by the code that makes
/// the change, in its transaction (TallyStore), and by the settlement SQL (`overdrawn:`,
/// `lease-wanted:`, migrations 0009, 0010 and 0015); read by each instance's change listener.
/// ``payload`` and ``init(payload:)`` are the one place that spells the wire form.
public enum ChangeNotice: Sendable, Hashable {
    /// `token:<id>`: a key's row (its status, limits, group, owner …).
    case token(Int64)
    /// `user:<id>`: a user's row (status, role, group).
    case user(Int64)
    /// `group:<name>`: a group's row (its rate limits); any key may be in it.
    case group(String)
    /// `channel:<id>`: a channel's row (status, groups, models).
    case channel(Int64)
    /// `import`: `tally import new-api` wrote accounts, keys and channels in bulk.
    case `import`
    /// `prices`: a price version was stored; every instance reads it before it prices another
    /// line (a line of the new version's time priced by the old one would stay mispriced).
    case prices
    /// `logs-dropped`: retention dropped a month's request rows; ingest refuses that month's
    /// lines from now on (each instance reads the dropped months again).
    case logsDropped
    /// `overdrawn:user:<id>`, `overdrawn:token:<id>`: a settlement overdrew the account.
    case overdrawn(LeaseAccount)
    /// `lease-wanted:user:<id>`, `lease-wanted:token:<id>`: another instance ran short of it.
    case leaseWanted(LeaseAccount)
    /// `*`: anything may have changed (never sent: the listener reconnected and may have missed
    /// notifications, or it read a payload it does not know, say from a newer instance).
    case everything

    /// The payload as sent on `tally_changes`.
    public var payload: String {
        switch self {
        case .token(let id): "token:\(id)"
        case .user(let id): "user:\(id)"
        case .group(let name): "group:\(name)"
        case .channel(let id): "channel:\(id)"
        case .import: "import"
        case .prices: "prices"
        case .logsDropped: "logs-dropped"
        case .overdrawn(let account): "overdrawn:" + Self.payload(of: account)
        case .leaseWanted(let account): "lease-wanted:" + Self.payload(of: account)
        case .everything: "*"
        }
    }

    /// Reads a payload; nil when it is not one of the forms above (an id that is not a 64-bit
    /// integer, an empty group name, an unknown kind).
    public init?(payload: String) {
        guard let colon = payload.firstIndex(of: ":") else {
            switch payload {
            case "import": self = .import
            case "prices": self = .prices
            case "logs-dropped": self = .logsDropped
            case "*": self = .everything
            default: return nil
            }
            return
        }
        let kind = payload[..<colon], rest = payload[payload.index(after: colon)...]
        let notice: ChangeNotice? =
            switch kind {
            case "token": Self.id(rest).map(ChangeNotice.token)
            case "user": Self.id(rest).map(ChangeNotice.user)
            case "channel": Self.id(rest).map(ChangeNotice.channel)
            case "group": rest.isEmpty ? nil : .group(String(rest))
            case "overdrawn": Self.account(rest).map(ChangeNotice.overdrawn)
            case "lease-wanted": Self.account(rest).map(ChangeNotice.leaseWanted)
            default: nil
            }
        guard let notice else { return nil }
        self = notice
    }

    private static func payload(of account: LeaseAccount) -> String {
        switch account {
        case .user(let id): "user:\(id)"
        case .token(let id): "token:\(id)"
        }
    }

    /// `user:<id>` or `token:<id>`.
    private static func account(_ text: Substring) -> LeaseAccount? {
        switch ChangeNotice(payload: String(text)) {
        case .user(let id): .user(id)
        case .token(let id): .token(id)
        default: nil
        }
    }

    /// A decimal row id: digits only (no sign, no spaces), within Int64.
    private static func id(_ text: Substring) -> Int64? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return Int64(text)
    }
}
