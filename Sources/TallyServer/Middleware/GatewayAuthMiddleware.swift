import Hummingbird
import TallyCore
import TallyStore

/// Gateway routes (`/gateway/…`) authenticate with the shared secret of `TALLY_GATEWAY_SECRET`,
/// sent as `Authorization: Bearer <secret>`. Compared in constant time on SHA-256 digests, so
/// neither the secret's content nor its length leaks through timing.
public struct GatewayAuthMiddleware: RouterMiddleware {
    public typealias Context = TallyRequestContext
    private let secretHash: SecretHash?

    public init(secret: String) {
        secretHash = secret.isEmpty ? nil : SecretHash(of: secret)
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        guard let presented = UserAuthMiddleware.accessToken(from: request.headers[.authorization]) else {
            throw APIError(.missingToken)
        }
        // Without a secret configured every gateway call is refused: the server's setting is
        // wrong (start-up warned), not the caller guessing, so the refusal is not a failed login.
        guard let secretHash else { throw APIError(.invalidToken) }
        guard Self.constantTimeEqual(SecretHash(of: presented).bytes, secretHash.bytes) else {
            throw CredentialRejected(APIError(.invalidToken))
        }
        do {
            return try await next(request, context)
        } catch {
            // The gateway is authenticated: a key refused further in is one of its users', not a
            // failed login of the gateway's address.
            if let rejected = error as? CredentialRejected { throw rejected.error }
            throw error
        }
    }

    static func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
        return difference == 0
    }
}
