import TallyPostgres

/// Errors of the store that callers turn into HTTP answers or CLI messages.
public enum StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A row the caller named does not exist (or is not the caller's).
    case notFound(String)
    /// The request conflicts with existing data (duplicate name, used code …).
    case conflict(String)
    /// Input that passed parsing but breaks a rule of the domain.
    case invalid(String)
    /// A bug or a broken installation; never caused by the caller.
    case internalError(String)

    public var description: String {
        switch self {
        case .notFound(let message), .conflict(let message), .invalid(let message), .internalError(let message):
            return message
        }
    }
}
