import TallyPostgres

/// One account whose figures disagree with the ledger or the request logs.
public struct AuditViolation: Sendable, Equatable, CustomStringConvertible {
    public let userID: Int64
    public let username: String
    public let problem: String

    public var description: String { "user \(userID) (\(username)): \(problem)" }
}

/// Checks the money invariants of DESIGN §2 over the whole database:
/// balance = sum of the user's ledger rows; used_quota = its charges = the quota of its logged
/// requests; request_count = its logged requests; the same for every token; and what users and
/// tokens have `reserved` equals the open holds reserving from them (DESIGN §5).
public struct Auditor: Sendable {
    let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    public func run() async throws -> [AuditViolation] {
        try await pool.withConnection { connection in
            try connection.query(Self.users).map { row in
                AuditViolation(userID: try row.decode(0), username: try row.decode(1), problem: try row.decode(2))
            } + connection.query(Self.tokens).map { row in
                AuditViolation(userID: try row.decode(0), username: try row.decode(1), problem: try row.decode(2))
            } + connection.query(Self.reservations).map { row in
                AuditViolation(userID: try row.decode(0), username: try row.decode(1), problem: try row.decode(2))
            }
        }
    }

    static let users = """
        WITH ledger_totals AS (
            SELECT user_id, sum(amount) AS balance, -sum(amount) FILTER (WHERE kind = 'charge') AS charges
            FROM ledger GROUP BY user_id
        ), log_totals AS (
            SELECT user_id, sum(quota) AS quota, count(*) AS requests FROM request_logs GROUP BY user_id
        ), checked AS (
            SELECT u.id, u.username, u.quota, u.used_quota, u.request_count,
                   coalesce(l.balance, 0) AS ledger_balance, coalesce(l.charges, 0) AS ledger_charges,
                   coalesce(r.quota, 0) AS logged_quota, coalesce(r.requests, 0) AS logged_requests
            FROM users u LEFT JOIN ledger_totals l ON l.user_id = u.id LEFT JOIN log_totals r ON r.user_id = u.id
        )
        SELECT id, username, concat_ws('; ',
            CASE WHEN quota <> ledger_balance THEN format('balance %s but ledger sums to %s', quota, ledger_balance) END,
            CASE WHEN used_quota <> ledger_charges THEN format('used_quota %s but ledger charges sum to %s', used_quota, ledger_charges) END,
            CASE WHEN ledger_charges <> logged_quota THEN format('ledger charges %s but logged requests cost %s', ledger_charges, logged_quota) END,
            CASE WHEN request_count <> logged_requests THEN format('request_count %s but %s requests are logged', request_count, logged_requests) END)
        FROM checked
        WHERE quota <> ledger_balance OR used_quota <> ledger_charges OR ledger_charges <> logged_quota
           OR request_count <> logged_requests
        ORDER BY id
        """

    static let tokens = """
        WITH log_totals AS (
            SELECT token_id, sum(quota) AS quota, count(*) AS requests FROM request_logs GROUP BY token_id
        )
        SELECT t.user_id, u.username, format('token %s: used_quota %s / request_count %s but logged requests cost %s in %s requests',
               t.id, t.used_quota, t.request_count, coalesce(r.quota, 0), coalesce(r.requests, 0))
        FROM tokens t JOIN users u ON u.id = t.user_id LEFT JOIN log_totals r ON r.token_id = t.id
        WHERE t.used_quota <> coalesce(r.quota, 0) OR t.request_count <> coalesce(r.requests, 0)
        ORDER BY t.id
        """

    static let reservations = """
        WITH user_holds AS (
            SELECT user_id, sum(amount) AS amount FROM holds WHERE status = 'held' GROUP BY user_id
        ), token_holds AS (
            SELECT token_id, sum(amount) AS amount FROM holds WHERE status = 'held' AND token_reserved GROUP BY token_id
        )
        SELECT u.id, u.username, format('reserved %s but open holds reserve %s', u.reserved, coalesce(h.amount, 0))
        FROM users u LEFT JOIN user_holds h ON h.user_id = u.id
        WHERE u.reserved <> coalesce(h.amount, 0)
        UNION ALL
        SELECT t.user_id, u.username, format('token %s: reserved %s but open holds reserve %s', t.id, t.reserved, coalesce(h.amount, 0))
        FROM tokens t JOIN users u ON u.id = t.user_id LEFT JOIN token_holds h ON h.token_id = t.id
        WHERE t.reserved <> coalesce(h.amount, 0)
        ORDER BY 1
        """
}
