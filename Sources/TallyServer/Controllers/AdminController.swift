import Foundation
import HTTPTypes
import Hummingbird
import TallyCore
import TallyStore

extension HTTPField.Name {
    /// Set on a top-up answer that replays an earlier call with the same idempotency key.
    static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
}

/// Admin routes (role ≥ 10): users and their keys, top-ups, redemption codes, groups, channels,
/// log lookup. Every change is audited by the store in the transaction of the change.
struct AdminController {
    let accounts: AccountRepository
    let tokens: TokenRepository
    let balances: BalanceRepository
    let groups: GroupRepository
    let channels: ChannelRepository
    let logs: LogRepository
    let auth: UserAuthMiddleware

    func addRoutes(to router: Router<TallyRequestContext>) {
        let users = router.group("/api/user").add(middleware: auth)
        users.get { request, context in try await listUsers(request, context) }
        users.post { request, context in try await createUser(request, context) }
        users.put { request, context in try await updateUser(request, context) }
        users.get(":id") { _, context in
            try SystemJSON.success(UserJSON(try await accounts.get(id: try SystemInput.id(context, what: "user"))))
        }
        users.post("manage") { request, context in try await manage(request, context) }

        let admin = router.group("/api/admin").add(middleware: auth)
        admin.get("users/:id/tokens") { request, context in try await userTokens(request, context) }
        admin.post("topups") { request, context in try await topUp(request, context) }
        admin.get("logs") { request, _ in try await lookup(request) }
        admin.get("groups") { _, _ in try SystemJSON.success(try await groups.all().map(GroupJSON.init)) }
        admin.post("groups") { request, context in try await createGroup(request, context) }
        admin.get("groups/:name") { _, context in
            try SystemJSON.success(GroupJSON(try await groups.get(name: try groupName(context))))
        }
        admin.put("groups/:name") { request, context in try await updateGroup(request, context) }
        admin.delete("groups/:name") { _, context in
            try await groups.delete(name: try groupName(context), by: actor(context))
            return try SystemJSON.successWithoutData()
        }

        let redemptions = router.group("/api/redemption").add(middleware: auth)
        redemptions.get { request, _ in
            let page = try await balances.listRedemptions(page: SystemInput.page(request))
            return try SystemJSON.success(SystemJSON.PageInfo(page) { RedemptionJSON($0) })
        }
        redemptions.post { request, context in try await createRedemptions(request, context) }

        let channel = router.group("/api/channel").add(middleware: auth)
        channel.get { request, _ in
            let page = try await channels.list(page: SystemInput.page(request))
            return try SystemJSON.success(SystemJSON.PageInfo(page) { ChannelJSON($0) })
        }
        channel.post { request, context in try await createChannel(request, context) }
        channel.put { request, context in try await updateChannel(request, context) }
        channel.get(":id") { _, context in
            try SystemJSON.success(ChannelJSON(try await channels.get(id: try SystemInput.id(context, what: "channel"))))
        }
    }

    /// A group name from the path; a name no group can have is not found.
    func groupName(_ context: TallyRequestContext) throws -> String {
        let name = try context.parameters.require("name")
        guard GroupRules.isValidName(name) else { throw APIError.notFound("group not found") }
        return name
    }

    func actor(_ context: TallyRequestContext) throws -> Actor {
        let user = try context.requireUser()
        return Actor(userID: user.id, name: user.username, tid: context.tid)
    }

    // MARK: Users

    func listUsers(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let page = try await accounts.list(page: SystemInput.page(request), keyword: SystemInput.string(request, "keyword"))
        return try SystemJSON.success(SystemJSON.PageInfo(page) { UserJSON($0) })
    }

    /// `GET /api/admin/users/{id}/tokens`: a user's API keys, masked and paged as `GET /api/token/`
    /// answers them to their owner; 404 when there is no such user.
    func userTokens(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let user = try await accounts.get(id: try SystemInput.id(context, what: "user"))
        let page = try await tokens.list(userID: user.id, page: SystemInput.page(request))
        return try SystemJSON.success(SystemJSON.PageInfo(page) { TokenJSON($0) })
    }

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
    func createUser(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let admin = try context.requireUser()
        let body = try await SystemInput.decode(UserBody.self, from: request)
        guard let username = body.username?.trimmingCharacters(in: .whitespaces), !username.isEmpty else {
            throw APIError.invalidRequest("username is required")
        }
        let roleValue = body.role ?? Role.user.rawValue
        guard let role = Role(rawValue: roleValue) else {
            throw APIError.invalidRequest("role must be 1 (user), 10 (admin) or 100 (root), got \(roleValue)")
        }
        let newUser = NewUser(username: username, displayName: body.display_name ?? username, email: body.email ?? "",
                              role: role, group: body.group ?? "default", quota: body.quota ?? 0)
        let (user, token) = try await withPermissionCheck {
            try await accounts.create(newUser, actorRole: admin.role, by: actor(context))
        }
        return try SystemJSON.success(CreatedUserJSON(user, accessToken: token))
    }

    func updateUser(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let admin = try context.requireUser()
        let body = try await SystemInput.decode(UserBody.self, from: request)
        guard let id = body.id else { throw APIError.invalidRequest("id is required: the id of the user to update") }
        guard id > 0 else { throw APIError.notFound("user \(id) not found") }
        let changes = AccountChanges(username: body.username?.trimmingCharacters(in: .whitespaces),
                                     displayName: body.display_name, email: body.email, group: body.group, quota: body.quota)
        let current = try await accounts.get(id: id)
        if let role = body.role, role != current.role.rawValue {
            throw APIError.invalidRequest("role cannot be changed here; use POST /api/user/manage with promote or demote")
        }
        let user = try await withPermissionCheck {
            try await accounts.update(id: id, changes, actorRole: admin.role, by: actor(context))
        }
        return try SystemJSON.success(UserJSON(user))
    }

    struct ManageBody: Decodable {
        var id: Int64?
        var action: String?
        var mode: String?
        var value: Int64?
    }

    struct ManagedJSON: Encodable {
        var role: Int
        var status: Int
    }

    /// new-api's `ManageUser`: `data` is `{role, status}` after the change.
    func manage(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let admin = try context.requireUser()
        let body = try await SystemInput.decode(ManageBody.self, from: request)
        guard let id = body.id else { throw APIError.invalidRequest("id is required: the id of the user to manage") }
        guard id > 0 else { throw APIError.notFound("user \(id) not found") }
        let action: ManageAction
        switch body.action {
        case "enable": action = .enable
        case "disable": action = .disable
        case "promote": action = .promote
        case "demote": action = .demote
        case "add_quota":
            guard let modeText = body.mode, let mode = ManageAction.QuotaMode(rawValue: modeText) else {
                throw APIError.invalidRequest("mode must be add, subtract or override for add_quota")
            }
            guard let value = body.value else { throw APIError.invalidRequest("value is required for add_quota") }
            action = .addQuota(mode: mode, value: value)
        case nil: throw APIError.invalidRequest("action is required: enable, disable, promote, demote or add_quota")
        case let other?:
            throw APIError.invalidRequest("unknown action \"\(other.prefix(40))\"; use enable, disable, promote, demote or add_quota")
        }
        let user = try await withPermissionCheck {
            try await accounts.manage(id: id, action, actorRole: admin.role, by: actor(context))
        }
        return try SystemJSON.success(ManagedJSON(role: user.role.rawValue, status: user.status))
    }

    // MARK: Top-ups

    struct TopUpBody: Decodable {
        var user_id: Int64?
        var amount: Int64?
        var reason: String?
        var idempotency_key: String?
    }

    /// `POST /api/admin/topups`: a replay with the same idempotency key answers the first result
    /// (with `Idempotent-Replayed: true`) and credits nothing.
    func topUp(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let body = try await SystemInput.decode(TopUpBody.self, from: request)
        guard let userID = body.user_id else { throw APIError.invalidRequest("user_id is required") }
        guard let amount = body.amount else { throw APIError.invalidRequest("amount is required: quota units to credit (500000 = 1 USD)") }
        guard userID > 0 else { throw APIError.notFound("user \(userID) not found") }
        let result = try await balances.topUp(userID: userID, amount: amount, reason: body.reason ?? "",
                                              idempotencyKey: body.idempotency_key, by: actor(context))
        return try SystemJSON.success(TopUpJSON(result), headers: result.replayed ? [.idempotentReplayed: "true"] : [:])
    }

    // MARK: Redemption codes

    struct RedemptionBody: Decodable {
        var name: String?
        var count: Int?
        var quota: Int64?
        var expired_time: Int64?
    }

    /// new-api's `AddRedemption`: `data` is the list of new codes, shown only now.
    func createRedemptions(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let body = try await SystemInput.decode(RedemptionBody.self, from: request)
        let codes = try await balances.createRedemptions(
            name: body.name ?? "", count: body.count ?? 1, quota: body.quota ?? 100,
            expiredTime: body.expired_time ?? 0, by: actor(context))
        return try SystemJSON.success(codes)
    }

    // MARK: Groups

    struct GroupBody: Decodable {
        var name: String?
        var description: String?
        var selectable: Bool?
        var rpm_limit: Int?
        /// Distinguishes `"rpm_limit": null` (remove the limit) from an absent field.
        var hasRPMLimit = false

        enum CodingKeys: String, CodingKey { case name, description, selectable, rpm_limit }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            name = try container.decodeIfPresent(String.self, forKey: .name)
            description = try container.decodeIfPresent(String.self, forKey: .description)
            selectable = try container.decodeIfPresent(Bool.self, forKey: .selectable)
            rpm_limit = try container.decodeIfPresent(Int.self, forKey: .rpm_limit)
            hasRPMLimit = container.contains(.rpm_limit)
        }
    }

    func createGroup(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let body = try await SystemInput.decode(GroupBody.self, from: request)
        guard let name = body.name, !name.isEmpty else { throw APIError.invalidRequest("name is required") }
        let group = try await groups.create(name: name, description: body.description ?? "", selectable: body.selectable ?? true,
                                            rpmLimit: body.rpm_limit, by: actor(context))
        return try SystemJSON.success(GroupJSON(group))
    }

    func updateGroup(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let name = try groupName(context)
        let body = try await SystemInput.decode(GroupBody.self, from: request)
        if let renamed = body.name, renamed != name {
            throw APIError.invalidRequest("a group cannot be renamed; create the new group and move users, keys and channels to it")
        }
        let changes = GroupChanges(description: body.description, selectable: body.selectable,
                                   rpmLimit: body.hasRPMLimit ? .some(body.rpm_limit) : nil)
        return try SystemJSON.success(GroupJSON(try await groups.update(name: name, changes, by: actor(context))))
    }

    // MARK: Channels

    struct ChannelBody: Decodable {
        var id: Int64?
        var name: String?
        var status: Int?
        var group: CommaList?
        var groups: CommaList?
        var models: CommaList?
    }

    /// new-api posts `{"mode":"single","channel":{…}}`; older clients post the channel itself.
    struct ChannelEnvelope: Decodable {
        var channel: ChannelBody?
    }

    func channelBody(_ request: Request) async throws -> ChannelBody {
        let data = try await SystemInput.body(request)
        if let envelope = try? JSONDecoder().decode(ChannelEnvelope.self, from: data), let channel = envelope.channel {
            return channel
        }
        return try SystemInput.decode(ChannelBody.self, from: data)
    }

    func createChannel(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let body = try await channelBody(request)
        guard let name = body.name else { throw APIError.invalidRequest("name is required") }
        let draft = ChannelDraft(name: name, status: body.status ?? 1, groups: (body.group ?? body.groups)?.items ?? ["default"],
                                 models: body.models?.items ?? [])
        return try SystemJSON.success(ChannelJSON(try await channels.create(draft, by: actor(context))))
    }

    func updateChannel(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let body = try await channelBody(request)
        guard let id = body.id else { throw APIError.invalidRequest("id is required: the id of the channel to update") }
        guard id > 0 else { throw APIError.notFound("channel \(id) not found") }
        let changes = ChannelChanges(name: body.name, status: body.status, groups: (body.group ?? body.groups)?.items,
                                     models: body.models?.items)
        return try SystemJSON.success(ChannelJSON(try await channels.update(id: id, changes, by: actor(context))))
    }

    // MARK: Log lookup

    struct RejectJSON: Encodable {
        var id: Int64
        var received_at: Int64
        var batch_tid: String
        var line: Int
        var request_id: String?
        var code: String
        var message: String
        var raw: String
    }

    struct AuditJSON: Encodable {
        var id: Int64
        var at: Int64
        var actor_id: Int64?
        var actor: String
        var action: String
        var target: String
        var before: String?
        var after: String?
        var tid: String?
    }

    struct LookupJSON: Encodable {
        var logs: [LogJSON]
        var rejects: [RejectJSON]
        var audit: [AuditJSON]
    }

    /// `GET /api/admin/logs?tid=…|request_id=…`: request rows (any user), ingest rejects and
    /// audit entries recorded under that tid or request id.
    func lookup(_ request: Request) async throws -> Response {
        let tid = try SystemInput.string(request, "tid")?.lowercased()
        let requestID = try SystemInput.string(request, "request_id")
        guard tid != nil || requestID != nil else {
            throw APIError.invalidRequest("give tid (32 hex characters) or request_id")
        }
        if let tid, !TraceID.isValid(tid) { throw APIError.invalidRequest("tid must be 32 hexadecimal characters") }
        if let requestID, requestID.count > 200 { throw APIError.invalidRequest("request_id is longer than 200 characters") }
        let found = try await logs.lookup(tid: tid, requestID: requestID)
        return try SystemJSON.success(LookupJSON(
            logs: found.logs.map(LogJSON.init),
            rejects: found.rejects.map {
                RejectJSON(id: $0.id, received_at: $0.receivedTime, batch_tid: $0.batchTid, line: $0.line,
                           request_id: $0.requestID, code: $0.code, message: $0.message, raw: $0.raw)
            },
            audit: found.audit.map {
                AuditJSON(id: $0.id, at: $0.time, actor_id: $0.actorID, actor: $0.actor, action: $0.action,
                          target: $0.target, before: $0.before, after: $0.after, tid: $0.tid)
            }))
    }
}
