import Foundation
import Hummingbird
import TallyCore
import TallyStore

/// `GET /api/admin/statements/{user_id}/{month}` (admins): a user's monthly statement, as JSON
/// or text (docs/exports.md).
struct StatementController {
    let statements: StatementRepository

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get("admin/statements/:user_id/:month", use: statement)
        return routes
    }

    @Sendable func statement(_ request: Request, context: TallyRequestContext) async throws -> Response {
        let userID = try SystemInput.id(context, "user_id", what: "user")
        let month = try ExportStreamer.month(context.parameters.get("month"))
        let format = try SystemInput.string(request, "format") ?? "json"
        guard format == "json" || format == "text" else {
            throw APIError.invalidRequest("format must be json or text, got \"\(format.prefix(40))\"")
        }
        let statement = try await statements.statement(userID: userID, month: month)
        guard format == "json" else {
            return Response(
                status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: statement.text)))
        }
        return try SystemJSON.success(StatementJSON(statement))
    }
}

/// A statement as JSON: units, and USD with 6 decimals as exact strings.
public struct StatementJSON: Encodable {
    /// The JSON text `tally statement --json` prints: the `data` of the HTTP answer.
    public static func text(_ statement: Statement) throws -> String {
        String(decoding: try SystemJSON.encoder.encode(StatementJSON(statement)), as: UTF8.self)
    }

    struct Credit: Encodable {
        var id: Int64
        var at: Int64
        var kind: String
        var amount: Int64
        var amount_usd: String
        var reason: String
    }

    struct Model: Encodable {
        var model: String
        var requests: Int64
        var quota: Int64
        var usd: String
    }

    var user_id: Int64
    var username: String
    var month: String
    var opening_balance: Int64
    var opening_balance_usd: String
    var credits: [Credit]
    var credits_by_kind: [String: Int64]
    var total_credits: Int64
    var total_credits_usd: String
    var charges: Int64
    var charges_usd: String
    var requests: Int64
    var charges_by_model: [Model]
    var closing_balance: Int64
    var closing_balance_usd: String

    init(_ statement: Statement) {
        let usd = Money.formatUSD(units:)
        user_id = statement.userID
        username = statement.username
        month = statement.month.description
        opening_balance = statement.openingBalance
        opening_balance_usd = usd(statement.openingBalance)
        credits = statement.credits.map {
            Credit(
                id: $0.ledgerID, at: $0.at, kind: $0.kind, amount: $0.amount, amount_usd: usd($0.amount),
                reason: $0.reason)
        }
        credits_by_kind = Dictionary(uniqueKeysWithValues: statement.creditsByKind.map { ($0.kind, $0.amount) })
        total_credits = statement.totalCredits
        total_credits_usd = usd(statement.totalCredits)
        charges = statement.charges
        charges_usd = usd(statement.charges)
        requests = statement.requests
        charges_by_model = statement.chargesByModel.map {
            Model(model: $0.model, requests: $0.requests, quota: $0.quota, usd: usd($0.quota))
        }
        closing_balance = statement.closingBalance
        closing_balance_usd = usd(statement.closingBalance)
    }
}
