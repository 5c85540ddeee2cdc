import Foundation
import Hummingbird
import TallyCore
import TallyStore

/// System API authentication (DESIGN §6): `Authorization: Bearer <access token>` or the bare
/// token, and the optional `New-Api-User` header, checked when present. Sets `context.user`.
public struct UserAuthMiddleware: RouterMiddleware {
    public typealias Context = TallyRequestContext
    let users: any UserRepository
    let minimumRole: Role

    public init(users: any UserRepository, minimumRole: Role = .user) {
        self.users = users
        self.minimumRole = minimumRole
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response)
        async throws -> Response
    {
        guard let token = Self.accessToken(from: request.headers[.authorization]) else {
            throw APIError(.missingToken)
        }
        guard let user = try await users.find(accessToken: token) else {
            throw CredentialRejected(APIError(.invalidToken))
        }
        if let claimed = request.headers[.newAPIUser], Int64(claimed.trimmingCharacters(in: .whitespaces)) != user.id {
            throw APIError(.invalidToken)
        }
        guard !user.isSuspended else { throw APIError(.accountSuspended) }
        guard user.role >= minimumRole else { throw APIError(.insufficientPermissions) }
        var context = context
        context.user = user
        context.logger[metadataKey: "user_id"] = .stringConvertible(user.id)
        return try await next(request, context)
    }

    /// The token of an `Authorization` header: `Bearer <t>` or `<t>`; nil when absent or blank.
    static func accessToken(from header: String?) -> String? {
        header.flatMap(BearerCredential.value(of:)).map(String.init)
    }
}
