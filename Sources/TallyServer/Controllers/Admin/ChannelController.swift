import Foundation
import Hummingbird
import TallyCore
import TallyStore

/// `/api/channel/…` (admins): which groups a channel serves and which models it offers.
struct ChannelController {
    let channels: ChannelRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("channel", use: list)
        routes.post("channel", use: create)
        routes.put("channel", use: update)
        routes.get("channel/:id", use: get)
        return routes
    }

    @Sendable func list(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let page = try await channels.list(page: SystemInput.page(request))
        return try SystemJSON.success(SystemJSON.PageInfo(page) { ChannelJSON($0) })
    }

    @Sendable func get(_ request: Request, context: TallyRequestContext) async throws -> Response {
        try SystemJSON.success(ChannelJSON(try await channels.get(id: try SystemInput.id(context, what: "channel"))))
    }

    /// A channel as clients send it: new-api's names; `group` or `groups`, and `models`, as
    /// comma-separated text or arrays.
    struct ChannelBody: Decodable {
        var id: Int64?
        var name: String?
        var status: Int?
        var group: CommaList?
        var groups: CommaList?
        var models: CommaList?

        var groupNames: [String]? { (group ?? groups)?.items }

        /// new-api posts `{"mode":"single","channel":{…}}`; older clients post the channel itself.
        static func decode(_ request: Request) async throws -> ChannelBody {
            struct Wrapped: Decodable { var channel: ChannelBody? }
            let data = try await SystemInput.body(request)
            if let wrapped = try? JSONDecoder().decode(Wrapped.self, from: data), let channel = wrapped.channel {
                return channel
            }
            return try SystemInput.decode(ChannelBody.self, from: data)
        }
    }

    @Sendable func create(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let body = try await ChannelBody.decode(request)
        guard let name = body.name else { throw APIError.invalidRequest("name is required") }
        let draft = ChannelDraft(
            name: name, status: try body.status.map(ChannelStatus.parse) ?? .enabled,
            groups: body.groupNames ?? ["default"], models: body.models?.items ?? [])
        return try SystemJSON.success(ChannelJSON(try await channels.create(draft, by: context.requireActor())))
    }

    @Sendable func update(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let body = try await ChannelBody.decode(request)
        guard let id = body.id else { throw APIError.invalidRequest("id is required: the id of the channel to update") }
        guard id > 0 else { throw APIError.notFound("channel \(id) not found") }
        let changes = ChannelChanges(
            name: body.name, status: try body.status.map(ChannelStatus.parse),
            groups: body.groupNames, models: body.models?.items)
        return try SystemJSON.success(
            ChannelJSON(try await channels.update(id: id, changes, by: context.requireActor())))
    }
}
