import Foundation

/// The catalogued errors of DESIGN §7, word for word. Every error Tally answers with is one of
/// these or one of the stable non-catalog codes in `APIError` (bad body, 404, 413, 500, 503).
public enum CatalogEntry: String, CaseIterable, Sendable {
    case modelNotAvailable = "model_not_available"
    case providerRateLimited = "provider_rate_limited"
    case rateLimited = "rate_limited"
    case insufficientUserQuota = "insufficient_user_quota"
    case accountSuspended = "account_suspended"
    case insufficientPermissions = "insufficient_permissions"
    case ipNotAllowed = "ip_not_allowed"
    case modelNotAllowed = "model_not_allowed"
    case channelNotPermitted = "channel_not_permitted"
    case channelDisabled = "channel_disabled"
    case missingToken = "missing_token"
    case invalidToken = "invalid_token"
    case invalidChannelID = "invalid_channel_id"
    case promptMissing = "prompt_missing"
    case promptTooLong = "prompt_too_long"
    case textTooLong = "text_too_long"
    case sizeNotSupported = "size_not_supported"
    case nNotWithinRange = "n_not_within_range"

    /// The HTTP status of the entry.
    public var status: Int {
        switch self {
        case .modelNotAvailable, .providerRateLimited: 503
        case .rateLimited: 429
        case .insufficientUserQuota, .accountSuspended, .insufficientPermissions, .ipNotAllowed,
            .modelNotAllowed, .channelNotPermitted, .channelDisabled:
            403
        case .missingToken, .invalidToken: 401
        case .invalidChannelID, .promptMissing, .promptTooLong, .textTooLong, .sizeNotSupported,
            .nNotWithinRange:
            400
        }
    }

    /// The message template; `{last6}` and `{model}` are substituted. Dashes are U+2013.
    public var template: String {
        switch self {
        case .modelNotAvailable:
            "Incorrect model ID. Please request to view the model page or you do not have permission to use this model"
        case .providerRateLimited:
            "Rate limited by provider \u{2013} contact support to request higher concurrency or try again later."
        case .rateLimited: "The {model} model Too many requests; please try again later."
        case .insufficientUserQuota:
            "Your account balance is insufficient. Please recharge your account to continue using the API."
        case .accountSuspended: "Account suspended."
        case .insufficientPermissions: "Forbidden \u{2013} insufficient permissions."
        case .ipNotAllowed: "Forbidden \u{2013} key({last6}) allowed only from approved IP ranges."
        case .modelNotAllowed: "Forbidden \u{2013} key({last6}) not authorized to access the requested model."
        case .channelNotPermitted: "Key error;({last6})"
        case .channelDisabled: "Forbidden \u{2013} channel has been disabled."
        case .missingToken: "Unauthorized \u{2013} no access token supplied; please log in and include a valid token."
        case .invalidToken: "Unauthorized \u{2013} access token is invalid or expired."
        case .invalidChannelID: "Bad Request \u{2013} invalid channel ID."
        case .promptMissing: "prompt is required"
        case .promptTooLong: "prompt is too long"
        case .textTooLong: "input is too long"
        case .sizeNotSupported: "size not supported"
        case .nNotWithinRange: "invalid value of n"
        }
    }

    /// The message with its substitutions filled in, in one pass over the template (a value is
    /// never searched for placeholders). Every refusal builds one, so no Foundation string search.
    public func message(last6: String = "", model: String = "") -> String {
        let template = self.template
        var rest = Substring(template)
        guard rest.utf8.contains(UInt8(ascii: "{")) else { return template }
        var message = ""
        while let open = rest.firstIndex(of: "{") {
            message += rest[..<open]
            rest = rest[open...]
            if rest.hasPrefix("{last6}") {
                message += last6
                rest = rest.dropFirst("{last6}".count)
            } else if rest.hasPrefix("{model}") {
                message += model
                rest = rest.dropFirst("{model}".count)
            } else {
                message += "{"
                rest = rest.dropFirst()
            }
        }
        return message + rest
    }
}

/// An error answered over HTTP: a status, a stable machine code and a human message.
///
/// Messages never contain a full key, a hash or SQL: catalogue messages carry at most the last
/// six characters of a key, and internal failures are reported as `internal_error` with the tid.
public struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    public let status: Int
    public let code: String
    public let message: String

    public init(status: Int, code: String, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    /// A catalogue entry with its substitutions.
    public init(_ entry: CatalogEntry, last6: String = "", model: String = "") {
        self.init(status: entry.status, code: entry.rawValue, message: entry.message(last6: last6, model: model))
    }

    public var description: String { "\(status) \(code): \(message)" }

    // Non-catalog errors, each with a stable code.

    /// 400: the body or a parameter is malformed; `message` says what is wrong.
    public static func invalidRequest(_ message: String) -> APIError {
        APIError(status: 400, code: "invalid_request", message: message)
    }
    /// 404: no route, or a resource that does not exist or is not the caller's.
    public static func notFound(_ message: String = "Not found.") -> APIError {
        APIError(status: 404, code: "not_found", message: message)
    }
    public static func methodNotAllowed() -> APIError {
        APIError(status: 405, code: "method_not_allowed", message: "Method not allowed.")
    }
    /// 409: the request conflicts with the current state (duplicate name, used code).
    public static func conflict(_ message: String) -> APIError {
        APIError(status: 409, code: "conflict", message: message)
    }
    /// 413: the body or the batch is larger than the limit.
    public static func payloadTooLarge(_ message: String) -> APIError {
        APIError(status: 413, code: "payload_too_large", message: message)
    }
    /// 415: a body in an encoding Tally does not read (a compressed ingest batch).
    public static func unsupportedMediaType(_ message: String) -> APIError {
        APIError(status: 415, code: "unsupported_media_type", message: message)
    }
    /// 500: a bug; details are in the server log under the tid.
    public static func internalError() -> APIError {
        APIError(status: 500, code: "internal_error", message: "Internal error; report the tid to support.")
    }
    /// 503: PostgreSQL is unreachable (or aborted the request's transaction in favour of concurrent
    /// ones on every try); the request changed nothing and may be retried.
    public static func databaseUnavailable() -> APIError {
        APIError(status: 503, code: "database_unavailable", message: "The database is unavailable; try again shortly.")
    }
}
