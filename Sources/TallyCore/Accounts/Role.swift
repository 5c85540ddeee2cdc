/// System roles, with new-api's numbers.
public enum Role: Int, Sendable, Codable, Comparable {
    case user = 1, admin = 10, root = 100
    public static func < (lhs: Role, rhs: Role) -> Bool { lhs.rawValue < rhs.rawValue }

    /// new-api's `canManageTargetRole`: root manages everyone, others only lower roles; the
    /// operator's CLI (no role) manages everyone.
    public static func canManage(actor: Role?, target: Role) -> Bool {
        guard let actor else { return true }
        return actor == .root || actor > target
    }
}
