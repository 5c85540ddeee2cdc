import Foundation
import TallyCore
import TallyPostgres

/// One credit (or adjustment) of a statement: a non-charge ledger row of the month.
public struct StatementCredit: Sendable, Equatable {
    public var ledgerID: Int64
    /// Unix seconds.
    public var at: Int64
    /// topup, redeem, refund or adjust (an adjustment may be negative).
    public var kind: String
    public var amount: Int64
    public var reason: String
}

/// The charges of one model in a statement (from the usage rollups).
public struct ModelCharge: Sendable, Equatable {
    public var model: String
    public var requests: Int64
    public var quota: Int64
}

/// A user's month (DESIGN §2, §8): closing = opening + credits − charges, in quota units.
///
/// Each ledger row counts in one month, `ledger.month` (docs/exports.md): charges in the UTC
/// month of their requests, credits in the UTC month they were booked. The opening balance is the
/// sum of every earlier month's rows, so one month's closing balance is the next one's opening.
public struct Statement: Sendable, Equatable {
    public var userID: Int64
    public var username: String
    public var month: UsageMonth
    public var openingBalance: Int64
    /// The month's non-charge ledger rows, oldest first.
    public var credits: [StatementCredit]
    public var totalCredits: Int64
    /// The month's charges from the ledger (positive).
    public var charges: Int64
    /// The month's requests and their cost per model, from the usage rollups (the exports' source).
    public var chargesByModel: [ModelCharge]
    public var closingBalance: Int64

    /// Credit totals per kind, in a fixed order, kinds without rows left out.
    public var creditsByKind: [(kind: String, amount: Int64)] {
        ["topup", "redeem", "refund", "adjust"].compactMap { kind in
            let rows = credits.filter { $0.kind == kind }
            return rows.isEmpty ? nil : (kind, rows.reduce(0) { $0 + $1.amount })
        }
    }

    public var requests: Int64 { chargesByModel.reduce(0) { $0 + $1.requests } }
}

/// Reads statements from the ledger and the usage rollups (both outlive request-row retention).
public struct StatementRepository: Sendable {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    /// The statement of `userID` for `month`; not found for an unknown user.
    public func statement(userID: Int64, month: UsageMonth) async throws -> Statement {
        try await pool.transaction { connection in
            // One snapshot for all three reads, so a batch committing meanwhile cannot split them.
            try connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            guard let user = try connection.query("SELECT username FROM users WHERE id = $1", [userID]).first else {
                throw StoreError.notFound("user \(userID) not found")
            }
            let balances = try connection.query(Self.balances, [userID, month.firstDay])[0]
            let credits = try connection.query(Self.credits, [userID, month.firstDay]).map { row in
                StatementCredit(
                    ledgerID: try row.decode(0), at: try row.decode(1), kind: try row.decode(2),
                    amount: try row.decode(3), reason: try row.decode(4))
            }
            let models = try connection.query(Self.models, [userID, month.firstDay, month.adding(months: 1).firstDay])
                .map { row in
                    ModelCharge(model: try row.decode(0), requests: try row.decode(1), quota: try row.decode(2))
                }
            return Statement(
                userID: userID, username: try user.decode(0), month: month,
                openingBalance: try balances.decode(0), credits: credits, totalCredits: try balances.decode(1),
                charges: try balances.decode(2), chargesByModel: models, closingBalance: try balances.decode(3))
        }
    }

    /// Opening, credits, charges and closing from one scan of the user's rows up to the month.
    static let balances = PreparedStatement(
        "statement_balances",
        """
        SELECT coalesce(sum(amount) FILTER (WHERE month < $2::date), 0)::bigint,
               coalesce(sum(amount) FILTER (WHERE month = $2::date AND kind <> 'charge'), 0)::bigint,
               coalesce(-sum(amount) FILTER (WHERE month = $2::date AND kind = 'charge'), 0)::bigint,
               coalesce(sum(amount), 0)::bigint
        FROM ledger WHERE user_id = $1 AND month <= $2::date
        """)

    static let credits = PreparedStatement(
        "statement_credits",
        """
        SELECT id, \(SQL.unix("at")), kind, amount, reason FROM ledger
        WHERE user_id = $1 AND month = $2::date AND kind <> 'charge' ORDER BY at, id
        """)

    static let models = PreparedStatement(
        "statement_models",
        """
        SELECT model, sum(requests)::bigint, sum(quota)::bigint FROM usage_rollups
        WHERE user_id = $1 AND day >= $2::date AND day < $3::date
        GROUP BY model ORDER BY model COLLATE "C"
        """)
}

extension Statement {
    /// The printable form: fixed-width columns, units and USD side by side.
    public var text: String {
        func grouped(_ units: Int64) -> String {
            var digits = String(units.magnitude)
            for index in stride(from: digits.count - 3, to: 0, by: -3) {
                digits.insert(",", at: digits.index(digits.startIndex, offsetBy: index))
            }
            return (units < 0 ? "-" : "") + digits
        }
        func money(_ units: Int64) -> String {
            pad(grouped(units), 18) + pad(Money.formatUSD(units: units), 16) + " USD"
        }
        func pad(_ text: String, _ width: Int) -> String {
            String(repeating: " ", count: max(0, width - text.count)) + text
        }
        func line(_ label: String, _ units: Int64) -> String {
            label.padding(toLength: 44, withPad: " ", startingAt: 0) + money(units)
        }
        let formatter = ISO8601DateFormatter()
        var lines = ["Statement \(month) (UTC) for user \(userID) \(username)", ""]
        lines.append(line("Opening balance", openingBalance))
        lines.append("Credits")
        for credit in credits {
            let day = String(formatter.string(from: Date(timeIntervalSince1970: TimeInterval(credit.at))).prefix(10))
            let oneLine = credit.reason.split(whereSeparator: { $0.isNewline || $0 == "\t" }).joined(separator: " ")
            let reason = oneLine.isEmpty ? "" : " " + String(oneLine.prefix(20))
            lines.append(line("  \(day) \(credit.kind)\(reason)", credit.amount))
        }
        lines.append(line("  Total credits", totalCredits))
        lines.append("Charges by model")
        for model in chargesByModel {
            lines.append(line("  \(String(model.model.prefix(26))) (\(model.requests) req)", model.quota))
        }
        lines.append(line("  Total charges", charges))
        lines.append(line("Closing balance", closingBalance))
        lines.append("")
        lines.append("closing = opening + credits - charges; 500,000 units = 1 USD")
        return lines.joined(separator: "\n") + "\n"
    }
}
