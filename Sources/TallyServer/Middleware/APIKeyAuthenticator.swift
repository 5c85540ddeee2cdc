import Foundation
import HTTPTypes
import Hummingbird
import TallyCore
import TallyStore

extension HTTPField.Name {
    static let xAPIKey = HTTPField.Name("x-api-key")!
    static let xGoogAPIKey = HTTPField.Name("x-goog-api-key")!
    static let anthropicVersion = HTTPField.Name("anthropic-version")!
}

/// API-key authentication of the client-facing `/v1/…` and `/dashboard/…` routes, as new-api's
/// `TokenAuth`: `Authorization: Bearer sk-…` (or the bare key); on `GET /v1/models` also
/// `x-api-key` (Anthropic's clients), `?key=` and `x-goog-api-key` (Gemini's). A key sent
/// without `sk-` is looked up with it; a channel suffix (`sk-KEY-3`) is an admin's (``RelayKey``).
///
/// Answers, in new-api's order: no key → `missing_token`; unknown, deleted, disabled, expired or
/// exhausted key → `invalid_token`; a client address outside the key's IP allow-list (or an
/// unknown one, when the key has a list) → `ip_not_allowed`; a suspended owner → `account_suspended`;
/// a channel suffix on a key of anyone but an admin → `channel_not_permitted`.
struct APIKeyAuthenticator: Sendable {
    let tokens: TokenRepository

    func authenticate(_ request: Request, context: TallyRequestContext) async throws -> (token: APIToken, owner: User) {
        let (key, found) = try await lookUp(request)
        guard found.token.isUsable else { throw APIError(.invalidToken) }
        guard Self.allows(found.token, from: context.clientAddress) else {
            throw APIError(.ipNotAllowed, last6: found.token.keyLast6)
        }
        guard !found.owner.isSuspended else { throw APIError(.accountSuspended) }
        guard key.channelPin == nil || found.owner.role >= .admin else {
            throw APIError(.channelNotPermitted, last6: found.token.keyLast6)
        }
        return found
    }

    /// new-api's `TokenAuthReadOnly`, for a key reading its own figures (`GET /api/usage/token/`):
    /// the key must exist and not be disabled, and its owner not be suspended; an expired or
    /// exhausted key may still read why it stopped, from any address (the allow-list and a
    /// channel suffix are for requests that spend).
    func authenticateReadOnly(_ request: Request) async throws -> (token: APIToken, owner: User) {
        let found = try await lookUp(request).found
        guard found.token.status != .disabled else { throw APIError(.invalidToken) }
        guard !found.owner.isSuspended else { throw APIError(.accountSuspended) }
        return found
    }

    /// The request's key and what it names: no key is `missing_token`, a key that names none (or
    /// a deleted one) `invalid_token`, counted as a failed credential.
    private func lookUp(_ request: Request) async throws -> (key: RelayKey, found: (token: APIToken, owner: User)) {
        guard let key = Self.key(from: request) else { throw APIError(.missingToken) }
        guard let found = try await tokens.find(key: key.secret) else {
            throw CredentialRejected(APIError(.invalidToken))
        }
        return (key, found)
    }

    /// True when the key has no allow-list or `address` is inside it. A stored list that does
    /// not parse allows nothing (never everything).
    static func allows(_ token: APIToken, from address: String?) -> Bool {
        guard !token.allowIPs.isEmpty else { return true }
        guard let list = try? IPAllowList.parse(token.allowIPs), let address else { return false }
        return list.allows(address)
    }

    /// The key of a request; nil when none was sent. As new-api reads it: `Authorization`, and on
    /// `/v1/models` each of `x-api-key`, `?key=` and `x-goog-api-key` that is sent replaces the one
    /// before it (so with a Bearer key and `x-api-key` both, `x-api-key` is the one looked up).
    static func key(from request: Request) -> RelayKey? {
        let raw = keyFields(of: request).reversed().lazy.compactMap { $0.flatMap(BearerCredential.value(of:)) }.first
        return raw.flatMap { RelayKey(String($0)) }
    }

    /// True when the request's only credential is a key in its URL (`GET /v1/models?key=`).
    static func keyInURLOnly(of request: Request) -> Bool {
        let fields = keyFields(of: request)
        return fields.count == 4 && fields[2] != nil && fields[0] == nil && fields[1] == nil && fields[3] == nil
    }

    /// The fields a key may come in on this request's route, in the order they are read.
    static func keyFields(of request: Request) -> [String?] {
        // The route's path however it was written (`/v1/models/` reaches it too).
        guard request.uri.path.split(separator: "/") == ["v1", "models"] else {
            return [request.headers[.authorization]]
        }
        return [
            request.headers[.authorization], request.headers[.xAPIKey], request.uri.queryParameters.get("key"),
            request.headers[.xGoogAPIKey],
        ]
    }
}
