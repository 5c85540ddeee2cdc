import Foundation
import HTTPTypes
import Hummingbird
import TallyCore
import TallyStore

extension HTTPField.Name {
    static let xAPIKey = HTTPField.Name("x-api-key")!
    static let anthropicVersion = HTTPField.Name("anthropic-version")!
}

/// API-key authentication of the client-facing `/v1/…` and `/dashboard/…` routes, as new-api's
/// `TokenAuth`: `Authorization: Bearer sk-…` (or the bare key, or `x-api-key`). A channel
/// suffix (`sk-KEY-3`) is ignored; a key sent without `sk-` is looked up with it.
///
/// Answers: no key → `missing_token`; unknown, deleted, disabled, expired or exhausted key →
/// `invalid_token`; a suspended owner → `account_suspended`.
struct APIKeyAuthenticator: Sendable {
    let tokens: TokenRepository

    func authenticate(_ request: Request) async throws -> (token: APIToken, owner: User) {
        guard let key = Self.key(from: request) else { throw APIError(.missingToken) }
        guard let found = try await tokens.find(key: key) else { throw CredentialRejected(APIError(.invalidToken)) }
        guard found.token.isUsable else { throw APIError(.invalidToken) }
        guard !found.owner.isSuspended else { throw APIError(.accountSuspended) }
        return found
    }

    /// The full `sk-…` key of a request, normalised; nil when none was sent.
    static func key(from request: Request) -> String? {
        let raw = UserAuthMiddleware.accessToken(from: request.headers[.authorization])
            ?? request.headers[.xAPIKey].map { String(BearerCredential.trimmed($0[...])) }
        return raw.flatMap(Authorizer.normalizedKey)
    }
}
