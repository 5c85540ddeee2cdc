import HTTPTypes
import Hummingbird
import TallyCore
import TallyStore

extension HTTPField.Name {
    /// Set on a top-up answer that replays an earlier call with the same idempotency key.
    static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
}

/// `POST /api/admin/topups`: admins credit a balance (a ledger row), at most once per
/// idempotency key.
struct TopUpController {
    let balances: BalanceRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.post("admin/topups", use: topUp)
        return routes
    }

    struct TopUpBody: Decodable {
        var user_id: Int64?
        var amount: Int64?
        var reason: String?
        var idempotency_key: String?
    }

    /// A replay with the same idempotency key answers the first result (with
    /// `Idempotent-Replayed: true`) and credits nothing.
    @Sendable func topUp(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let body = try await SystemInput.decode(TopUpBody.self, from: request)
        guard let userID = body.user_id else { throw APIError.invalidRequest("user_id is required") }
        guard let amount = body.amount else {
            throw APIError.invalidRequest("amount is required: quota units to credit (500000 = 1 USD)")
        }
        guard userID > 0 else { throw APIError.notFound("user \(userID) not found") }
        let result = try await balances.topUp(
            userID: userID, amount: amount, reason: body.reason ?? "",
            idempotencyKey: body.idempotency_key, actorRole: context.requireUser().role, by: context.requireActor())
        return try SystemJSON.success(TopUpJSON(result), headers: result.replayed ? [.idempotentReplayed: "true"] : [:])
    }
}
