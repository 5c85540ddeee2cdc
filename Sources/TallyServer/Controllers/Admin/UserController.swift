import Foundation
import Hummingbird
import TallyCore
import TallyStore

/// Admins' routes over users (new-api's `/api/user/…` admin routes): list, create, update,
/// get, manage (enable, disable, promote, demote, add_quota), and a user's API keys. Every
/// change is audited by the store in the transaction of the change; the store refuses an actor
/// whose role is too low for the target (`PermissionDenied`, answered `insufficient_permissions`).
struct UserController {
    let accounts: AccountRepository
    let tokens: TokenRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("user", use: list)
        routes.post("user", use: create)
        routes.put("user", use: update)
        routes.get("user/:id", use: get)
        routes.post("user/manage", use: manage)
        routes.get("admin/users/:id/tokens", use: userTokens)
        return routes
    }

    /// `?keyword=` matches the username, display name or email, or the id.
    @Sendable func list(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let page = try await accounts.list(
            page: SystemInput.page(request), keyword: SystemInput.string(request, "keyword"))
        return try SystemJSON.success(SystemJSON.PageInfo(page) { UserJSON($0) })
    }

    @Sendable func get(_ request: Request, context: TallyRequestContext) async throws -> Response {
        try SystemJSON.success(UserJSON(try await managedUser(context)))
    }

    /// `GET /api/admin/users/{id}/tokens`: a user's API keys, masked and paged as `GET /api/token/`
    /// answers them to their owner; 404 when there is no such user.
    @Sendable func userTokens(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let user = try await managedUser(context)
        let page = try await tokens.list(userID: user.id, page: SystemInput.page(request))
        return try SystemJSON.success(SystemJSON.PageInfo(page) { TokenJSON($0) })
    }

    /// The user of the path's `id`, when the caller's role may manage it: an admin reads only
    /// users of lower roles, as new-api's `GetUser` allows (root reads everyone).
    private func managedUser(_ context: TallyRequestContext) async throws -> User {
        let admin = try context.requireUser()
        let user = try await accounts.get(id: try SystemInput.id(context, what: "user"))
        guard Role.canManage(actor: admin.role, target: user.role) else { throw APIError(.insufficientPermissions) }
        return user
    }

    /// The body of `POST` and `PUT /api/user/`: new-api's `model.User` fields Tally keeps.
    struct UserBody: Decodable {
        var id: Int64?
        var username: String?
        var display_name: String?
        var email: String?
        var role: Int?
        var group: String?
        var quota: Int64?
    }

    /// Creates a user and answers it with its system access token (shown only now).
    @Sendable func create(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let admin = try context.requireUser()
        let body = try await SystemInput.decode(UserBody.self, from: request)
        guard let username = body.username?.trimmingCharacters(in: .whitespaces), !username.isEmpty else {
            throw APIError.invalidRequest("username is required")
        }
        let roleValue = body.role ?? Role.user.rawValue
        guard let role = Role(rawValue: roleValue) else {
            throw APIError.invalidRequest("role must be 1 (user), 10 (admin) or 100 (root), got \(roleValue)")
        }
        let newUser = NewUser(
            username: username, displayName: body.display_name ?? username, email: body.email ?? "",
            role: role, group: body.group ?? "default", quota: body.quota ?? 0)
        let (user, token) = try await accounts.create(newUser, actorRole: admin.role, by: context.requireActor())
        return try SystemJSON.success(CreatedUserJSON(user, accessToken: token))
    }

    @Sendable func update(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let admin = try context.requireUser()
        let body = try await SystemInput.decode(UserBody.self, from: request)
        guard let id = body.id else { throw APIError.invalidRequest("id is required: the id of the user to update") }
        guard id > 0 else { throw APIError.notFound("user \(id) not found") }
        let changes = AccountChanges(
            username: body.username?.trimmingCharacters(in: .whitespaces),
            displayName: body.display_name, email: body.email, group: body.group,
            quota: body.quota)
        let current = try await accounts.get(id: id)
        if let role = body.role, role != current.role.rawValue {
            throw APIError.invalidRequest(
                "role cannot be changed here; use POST /api/user/manage with promote or demote")
        }
        let user = try await accounts.update(id: id, changes, actorRole: admin.role, by: context.requireActor())
        return try SystemJSON.success(UserJSON(user))
    }

    /// The body of `POST /api/user/manage`.
    struct ManageBody: Decodable {
        var id: Int64?
        var action: String?
        var mode: String?
        var value: Int64?

        /// new-api's action names; `add_quota` needs `mode` and `value`.
        func manageAction() throws -> ManageAction {
            switch action {
            case "enable": return .enable
            case "disable": return .disable
            case "promote": return .promote
            case "demote": return .demote
            case "add_quota":
                guard let modeText = mode, let mode = ManageAction.QuotaMode(rawValue: modeText) else {
                    throw APIError.invalidRequest("mode must be add, subtract or override for add_quota")
                }
                guard let value else { throw APIError.invalidRequest("value is required for add_quota") }
                return .addQuota(mode: mode, value: value)
            case nil:
                throw APIError.invalidRequest("action is required: enable, disable, promote, demote or add_quota")
            case let other?:
                throw APIError.invalidRequest(
                    "unknown action \"\(other.prefix(40))\"; use enable, disable, promote, demote or add_quota")
            }
        }
    }

    struct ManagedJSON: Encodable {
        var role: Int
        var status: Int
    }

    /// new-api's `ManageUser`: `data` is `{role, status}` after the change.
    @Sendable func manage(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let admin = try context.requireUser()
        let body = try await SystemInput.decode(ManageBody.self, from: request)
        guard let id = body.id else { throw APIError.invalidRequest("id is required: the id of the user to manage") }
        guard id > 0 else { throw APIError.notFound("user \(id) not found") }
        let action = try body.manageAction()
        let user = try await accounts.manage(id: id, action, actorRole: admin.role, by: context.requireActor())
        return try SystemJSON.success(ManagedJSON(role: user.role.rawValue, status: user.status.rawValue))
    }
}
