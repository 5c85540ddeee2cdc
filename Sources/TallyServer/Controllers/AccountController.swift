import Foundation
import Hummingbird
import TallyCore
import TallyStore

/// The signed-in user's own account: `/api/user/self`, `/api/user/token` (a new system access
/// token), `/api/user/models`, `/api/user/topup` (redeem a code) and `/api/group`.
struct AccountController {
    let accounts: AccountRepository
    let balances: BalanceRepository
    let groups: GroupRepository
    let models: ModelAvailability

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("user/self", use: ownAccount)
        // new-api issues the access token on GET; POST is accepted too (DESIGN / issue 6).
        routes.get("user/token", use: issueAccessToken)
        routes.post("user/token", use: issueAccessToken)
        routes.get("user/models", use: userModels)
        routes.post("user/topup", use: redeem)
        routes.get("group", use: groupNames)
        return routes
    }

    @Sendable func ownAccount(_ request: Request, context: TallyRequestContext) throws -> Response {
        try SystemJSON.success(SelfJSON(try context.requireUser()))
    }

    @Sendable func issueAccessToken(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let token = try await accounts.rotateAccessToken(id: try context.requireUser().id, by: context.requireActor())
        return try SystemJSON.success(token)
    }

    /// new-api's `GetUserModels`: `data` is a list of names. Without `?group=` it is the user's
    /// own group (DESIGN §6); `?group=` names another group the user may use (else `[]`).
    @Sendable func userModels(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        var group = user.group
        if let asked = try SystemInput.string(request, "group"), asked != user.group {
            guard try await groups.usable(by: user).contains(where: { $0.name == asked }) else {
                return try SystemJSON.success([String]())
            }
            group = asked
        }
        return try SystemJSON.success(try await models.models(group: group).map(\.id))
    }

    struct RedeemBody: Decodable { var key: String? }

    /// `POST /api/user/topup {"key"}`: `data` is the credited quota.
    @Sendable func redeem(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let body = try await SystemInput.decode(RedeemBody.self, from: request)
        guard let key = body.key, !key.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw APIError.invalidRequest("key is required: the redemption code to redeem")
        }
        do {
            return try SystemJSON.success(try await balances.redeem(code: key, userID: user.id, tid: context.tid))
        } catch let failure as RedeemFailure {
            switch failure {
            // A guessed code is a failed credential: it counts towards the caller's address limit.
            case .unknownCode: throw CredentialRejected(APIError.invalidRequest("invalid redemption code"))
            case .alreadyUsed: throw APIError.conflict("this redemption code has already been used")
            case .disabled: throw APIError.invalidRequest("this redemption code is disabled")
            case .expired: throw APIError.invalidRequest("this redemption code has expired")
            }
        }
    }

    /// `GET /api/group`: the names of the groups the caller may give a key: the selectable ones
    /// and its own, for admins too (a key of another group is refused at creation and at
    /// authorize; the group table is `/api/admin/groups`).
    @Sendable func groupNames(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        return try SystemJSON.success(try await groups.usable(by: user).map(\.name))
    }
}
