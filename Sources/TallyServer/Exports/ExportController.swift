import Foundation
import HTTPTypes
import Hummingbird
import Logging
import TallyCore
import TallyStore

/// Usage exports, statements and the caller's own usage (DESIGN §8, docs/exports.md).
struct ExportController {
    let exporter: UsageExporter
    let statements: StatementRepository
    let userAuth: UserAuthMiddleware
    let adminAuth: UserAuthMiddleware

    func addRoutes(to router: Router<TallyRequestContext>) {
        let admin = router.group("/api/admin").add(middleware: adminAuth)
        admin.get("exports/usage") { request, context in
            try await stream(try Self.export(request, allowed: Set(ExportDimension.allCases), defaultBy: "user",
                                             userID: try Self.userFilter(request)), context)
        }
        admin.get("statements/:user_id/:month") { request, context in try await statement(request, context) }
        router.group("/api/usage").add(middleware: userAuth).get("self") { request, context in
            try await stream(try Self.export(request, allowed: [.model, .day, .token], defaultBy: "model",
                                             userID: try context.requireUser().id, rawAllowed: false), context)
        }
    }

    // MARK: Exports

    /// Reads month, by, format, tz and raw; every mistake is a 400 before anything runs.
    static func export(_ request: Request, allowed: Set<ExportDimension>, defaultBy: String, userID: Int64?,
                       rawAllowed: Bool = true) throws -> UsageExport {
        let month = try month(SystemInput.string(request, "month"))
        let by = try SystemInput.string(request, "by")
        let format = try SystemInput.string(request, "format")
        let timeZone = try SystemInput.string(request, "tz")
        do {
            if rawAllowed, try flag(SystemInput.string(request, "raw"), name: "raw") {
                guard by == nil, timeZone == nil, format == nil || format == "csv" else {
                    throw APIError.invalidRequest("raw exports every request row as CSV: leave out by, tz and format (or give format=csv)")
                }
                return .raw(month: month, userID: userID)
            }
            return try UsageExport(month: month, by: ExportDimension.parseList(by ?? defaultBy, allowed: allowed),
                                   format: ExportFormat.parse(format ?? "csv"), userID: userID, timeZone: timeZone)
        } catch let error as StoreError {
            throw APIError.invalidRequest(error.description)
        }
    }

    static func month(_ text: String?) throws -> UsageMonth {
        guard let text else { throw APIError.invalidRequest("month is required: YYYY-MM (UTC)") }
        return try UsageMonth.parse(text, field: "month")
    }

    static func userFilter(_ request: Request) throws -> Int64? {
        guard let id = try SystemInput.integer(request, "user_id") else { return nil }
        guard id > 0 else { throw APIError.invalidRequest("user_id must be a positive integer") }
        return id
    }

    static func flag(_ text: String?, name: String) throws -> Bool {
        switch text {
        case nil, "false", "0": return false
        case "true", "1": return true
        default: throw APIError.invalidRequest("\(name) must be true or false")
        }
    }

    /// Streams the export as a chunked response. The response starts only once the export has
    /// produced its first chunk (or ended), so errors found before any output — a month whose
    /// request rows are gone, an unknown time zone — still get their status and envelope.
    func stream(_ export: UsageExport, _ context: TallyRequestContext) async throws -> Response {
        context.logger.info("export", metadata: ["export": "\(export.fileName)"])
        let pipe = ChunkPipe()
        let exporter = exporter
        Task {
            do {
                try await exporter.export(export) { try pipe.send($0) }
                pipe.finish(.success(()))
            } catch {
                pipe.finish(.failure(error))
            }
        }
        let first: ByteBuffer?
        do { first = try await pipe.next() } catch {
            pipe.close()
            throw error
        }
        let logger = context.logger
        let headers: HTTPFields = [
            .contentType: export.format == .csv ? "text/csv; charset=utf-8" : "application/x-ndjson",
            .contentDisposition: "attachment; filename=\"\(export.fileName)\"",
        ]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            do {
                var chunk = first
                while let bytes = chunk {
                    try await writer.write(bytes)
                    chunk = try await pipe.next()
                }
                try await writer.finish(nil)
            } catch {
                // Too late for an error status: the connection is closed mid-body instead.
                pipe.close()
                logger.warning("export stopped", metadata: ["export": "\(export.fileName)", "error": "\(error)"])
                throw error
            }
        })
    }

    // MARK: Statements

    func statement(_ request: Request, _ context: TallyRequestContext) async throws -> Response {
        let userID = try SystemInput.id(context, "user_id", what: "user")
        let month = try Self.month(context.parameters.get("month"))
        let format = try SystemInput.string(request, "format") ?? "json"
        guard format == "json" || format == "text" else { throw APIError.invalidRequest("format must be json or text, got \"\(format.prefix(40))\"") }
        let statement = try await statements.statement(userID: userID, month: month)
        guard format == "json" else {
            return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
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
            Credit(id: $0.ledgerID, at: $0.at, kind: $0.kind, amount: $0.amount, amount_usd: usd($0.amount), reason: $0.reason)
        }
        credits_by_kind = Dictionary(uniqueKeysWithValues: statement.creditsByKind.map { ($0.kind, $0.amount) })
        total_credits = statement.totalCredits
        total_credits_usd = usd(statement.totalCredits)
        charges = statement.charges
        charges_usd = usd(statement.charges)
        requests = statement.requests
        charges_by_model = statement.chargesByModel.map { Model(model: $0.model, requests: $0.requests, quota: $0.quota, usd: usd($0.quota)) }
        closing_balance = statement.closingBalance
        closing_balance_usd = usd(statement.closingBalance)
    }
}
