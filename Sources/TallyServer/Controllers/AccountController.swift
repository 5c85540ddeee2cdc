import Foundation
import Hummingbird
import TallyCore
import TallyStore

/// The signed-in user's own routes: `/api/user/self`, `/api/user/token`, `/api/user/models`,
/// `/api/user/topup`, `/api/group`, and the log routes `/api/log/self[/stat]`.
struct AccountController {
    let accounts: AccountRepository
    let balances: BalanceRepository
    let groups: GroupRepository
    let logs: LogRepository
    let models: ModelAvailability
    let auth: UserAuthMiddleware

    func addRoutes(to router: Router<TallyRequestContext>) {
        let user = router.group("/api/user").add(middleware: auth)
        user.get("self") { _, context in try SystemJSON.success(SelfJSON(try context.requireUser())) }
        // new-api issues the access token on GET; POST is accepted too (DESIGN / issue 6).
        user.get("token") { _, context in try await issueAccessToken(context) }
        user.post("token") { _, context in try await issueAccessToken(context) }
        user.get("models") { request, context in try await userModels(request, context) }
        user.post("topup") { request, context in try await redeem(request, context) }
        router.group("/api/group").add(middleware: auth).get { _, context in try await groupNames(context) }
        let log = router.group("/api/log/self").add(middleware: auth)
        log.get { request, context in try await selfLogs(request, context) }
        log.get("stat") { request, context in try await selfStat(request, context) }
    }

    func issueAccessToken(_ context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let token = try await accounts.rotateAccessToken(
            id: user.id, by: Actor(userID: user.id, name: user.username, tid: context.tid))
        return try SystemJSON.success(token)
    }

    /// new-api's `GetUserModels`: `data` is a list of names. Without `?group=` it is the user's
    /// own group (DESIGN §6); `?group=` names another group the user may use (else `[]`).
    func userModels(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
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
    func redeem(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
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

    /// `GET /api/group`: the names of the groups the caller may give a key (all for admins).
    func groupNames(_ context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let list = user.role >= .admin ? try await groups.all() : try await groups.usable(by: user)
        return try SystemJSON.success(list.map(\.name))
    }

    func selfLogs(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let page = try await logs.entries(userID: user.id, filter: try Self.logFilter(request),
                                          page: SystemInput.page(request), channelNames: false)
        return try SystemJSON.success(SystemJSON.PageInfo(page) { LogJSON($0) })
    }

    struct StatJSON: Encodable {
        var quota: Int64
        var rpm: Int64
        var tpm: Int64
    }

    func selfStat(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let user = try context.requireUser()
        let stat = try await logs.stat(userID: user.id, filter: try Self.logFilter(request))
        return try SystemJSON.success(StatJSON(quota: stat.quota, rpm: stat.rpm, tpm: stat.tpm))
    }

    /// new-api's log query parameters; `0` or empty means "no filter" as in new-api. `tid` is
    /// Tally's own: the requests logged under that trace id (a tid an error answer showed).
    static func logFilter(_ request: Request) throws -> LogFilter {
        func timestamp(_ name: String) throws -> Int64? {
            guard let value = try SystemInput.integer(request, name), value != 0 else { return nil }
            guard value > 0, value <= TokenRules.latestExpiry else {
                throw APIError.invalidRequest("\(name) must be a unix time in seconds, got \(value)")
            }
            return value
        }
        let type = try SystemInput.integer(request, "type") ?? 0
        let tid = try SystemInput.string(request, "tid")?.lowercased()
        if let tid, !TraceID.isValid(tid) { throw APIError.invalidRequest("tid must be 32 hexadecimal characters") }
        guard (0...7).contains(type) else { throw APIError.invalidRequest("type must be a log type from 0 to 7, got \(type)") }
        return try LogFilter(type: Int(type), startTimestamp: try timestamp("start_timestamp"),
                         endTimestamp: try timestamp("end_timestamp"), modelName: SystemInput.string(request, "model_name"),
                         tokenName: SystemInput.string(request, "token_name"), group: SystemInput.string(request, "group"),
                         requestID: SystemInput.string(request, "request_id"), tid: tid)
    }
}
