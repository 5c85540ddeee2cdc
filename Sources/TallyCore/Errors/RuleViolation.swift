/// Input that breaks a rule of the domain: a name too long, a quota out of range, a month that
/// is not `YYYY-MM`. The System API answers it `400 invalid_request` with `message`; the CLI
/// prints `message`. Messages name the field, say what it must be and quote what was given.
public struct RuleViolation: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}
