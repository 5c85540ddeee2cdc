import Hummingbird
import TallyCore
import TallyStore

/// `/api/admin/groups` (admins): the group table — who may pick a group, and its rate limits
/// (per key, and per user and model). Ratios live in the price sheet.
struct GroupController {
    let groups: GroupRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("admin/groups", use: list)
        routes.post("admin/groups", use: create)
        routes.get("admin/groups/:name", use: get)
        routes.put("admin/groups/:name", use: update)
        routes.delete("admin/groups/:name", use: delete)
        return routes
    }

    /// A group name from the path; a name no group can have is not found.
    static func groupName(_ context: TallyRequestContext) throws -> String {
        let name = try context.parameters.require("name")
        guard GroupRules.isValidName(name) else { throw APIError.notFound("group not found") }
        return name
    }

    @Sendable func list(_ request: Request, context: TallyRequestContext) async throws -> Response {
        try SystemJSON.success(try await groups.all().map(GroupJSON.init))
    }

    @Sendable func get(_ request: Request, context: TallyRequestContext) async throws -> Response {
        try SystemJSON.success(GroupJSON(try await groups.get(name: try Self.groupName(context))))
    }

    /// The body of `POST /api/admin/groups` and `PUT /api/admin/groups/{name}`.
    struct GroupBody: Decodable {
        var name: String?
        var description: String?
        var selectable: Bool?
        var rpm_limit: Int?
        var model_rpm_limit: Int?
        /// Distinguish `"rpm_limit": null` (remove the limit) from an absent field.
        var hasRPMLimit = false
        var hasModelRPMLimit = false

        enum CodingKeys: String, CodingKey { case name, description, selectable, rpm_limit, model_rpm_limit }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            name = try container.decodeIfPresent(String.self, forKey: .name)
            description = try container.decodeIfPresent(String.self, forKey: .description)
            selectable = try container.decodeIfPresent(Bool.self, forKey: .selectable)
            rpm_limit = try container.decodeIfPresent(Int.self, forKey: .rpm_limit)
            hasRPMLimit = container.contains(.rpm_limit)
            model_rpm_limit = try container.decodeIfPresent(Int.self, forKey: .model_rpm_limit)
            hasModelRPMLimit = container.contains(.model_rpm_limit)
        }
    }

    @Sendable func create(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let body = try await SystemInput.decode(GroupBody.self, from: request)
        guard let name = body.name, !name.isEmpty else { throw APIError.invalidRequest("name is required") }
        let group = try await groups.create(
            name: name, description: body.description ?? "",
            selectable: body.selectable ?? true, rpmLimit: body.rpm_limit, modelRPMLimit: body.model_rpm_limit,
            by: context.requireActor())
        return try SystemJSON.success(GroupJSON(group))
    }

    @Sendable func update(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let name = try Self.groupName(context)
        let body = try await SystemInput.decode(GroupBody.self, from: request)
        if let renamed = body.name, renamed != name {
            throw APIError.invalidRequest(
                "a group cannot be renamed; create the new group and move users, keys and channels to it")
        }
        let changes = GroupChanges(
            description: body.description, selectable: body.selectable,
            rpmLimit: body.hasRPMLimit ? .some(body.rpm_limit) : nil,
            modelRPMLimit: body.hasModelRPMLimit ? .some(body.model_rpm_limit) : nil)
        return try SystemJSON.success(
            GroupJSON(try await groups.update(name: name, changes, by: context.requireActor())))
    }

    @Sendable func delete(_ request: Request, context: TallyRequestContext) async throws -> Response {
        try await groups.delete(name: try Self.groupName(context), by: context.requireActor())
        return try SystemJSON.successWithoutData()
    }
}
