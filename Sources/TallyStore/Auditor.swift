import TallyCore
import TallyPostgres

/// One account whose figures disagree with the ledger or the request logs.
public struct AuditViolation: Sendable, Equatable, CustomStringConvertible {
    public let userID: Int64
    public let username: String
    public let problem: String

    public var description: String { "user \(userID) (\(username)): \(problem)" }
}

/// Checks the money invariants of DESIGN §2 over the whole database:
/// balance = sum of the user's ledger rows; used_quota = its charges = the quota of its
/// requests in the usage rollups; request_count = its requests there; the same for every token;
/// per month, its ledger charges = its rollups, and while its request rows are kept, the
/// rollups = the request rows; and what users
/// and tokens have `reserved` equals the open holds reserving from them plus the instances'
/// leases of them (DESIGN §5, docs/enforcement.md).
///
/// Balances and rollups are read with what committed batches charged and the fold has not
/// applied yet (`user_balances`, `token_balances`, `usage_rollups`, migration 0010); all checks
/// read one snapshot, so they hold at any instant, also while ingest and folds run (on Citus,
/// one snapshot per node: see ``run(month:)``).
///
/// With a month (`tally audit --month`), the month's figures instead (docs/exports.md): the
/// ledger's charges of the month = its usage rollups, which every export sums and statements
/// show per model = its request rows, while they are kept.
public struct Auditor: Sendable {
    let pool: PostgresPool
    /// Runs after the first check's query (tests: retention meanwhile).
    let afterFirstRead: (@Sendable () throws -> Void)?

    public init(pool: PostgresPool) { self.init(pool: pool, afterFirstRead: nil) }

    init(pool: PostgresPool, afterFirstRead: (@Sendable () throws -> Void)?) {
        self.pool = pool
        self.afterFirstRead = afterFirstRead
    }

    public func run(month: UsageMonth? = nil) async throws -> [AuditViolation] {
        var drops = try await retentionDrops()
        var violations = try await check(month: month)
        // A month retention detached and dropped while the audit read is still kept in the
        // snapshot's list of partitions, but request_logs no longer has it, and every account
        // with usage in it would be reported (a review). Read again, in a snapshot after the drop.
        // (Holding a lock on request_logs for the whole audit instead would stall the creation
        // of partitions, and ingest queued behind it, for as long as the audit runs.)
        for _ in 0..<Self.rereadsAfterDrops where !violations.isEmpty {
            let now = try await retentionDrops()
            guard now != drops else { break }
            drops = now
            violations = try await check(month: month)
        }
        guard !violations.isEmpty, try await isDistributed() else { return violations }
        // On Citus, the holds on the coordinator and the balances and leases on a worker are two
        // snapshots: a journal batch committing between them (two-phase, one node after the
        // other) shows there for an instant. What a fresh read no longer shows was that instant.
        for _ in 0..<Self.citusRereads where !violations.isEmpty {
            try await Task.sleep(for: .milliseconds(50))
            violations = try await check(month: month)
        }
        return violations
    }

    /// How many times a Citus audit with violations reads again before it reports them.
    static let citusRereads = 4

    /// How many times an audit with violations reads again after retention dropped a month.
    static let rereadsAfterDrops = 3

    /// Months retention has dropped so far (each drop commits its audit row with it).
    private func retentionDrops() async throws -> Int64 {
        try await pool.withConnection {
            try $0.query("SELECT count(*) FROM audit_log WHERE action = 'retention.drop'")[0].decode(0, as: Int64.self)
        }
    }

    private func isDistributed() async throws -> Bool {
        try await pool.withConnection { try CitusLayout.isInstalled(on: $0) }
    }

    /// Every check in one snapshot (repeatable read): a batch committing meanwhile cannot split them.
    private func check(month: UsageMonth?) async throws -> [AuditViolation] {
        try await pool.transaction { connection in
            try CitusLayout.readInOneSnapshot(on: connection)
            // Unnamed statements, planned at each audit: a prepared plan made while a month's
            // detach was pending but not yet in the snapshot reads that month, and a later audit
            // on the same connection, whose snapshot leaves the month out of the kept months,
            // reused it (RetentionTests.auditAfterPendingDetach).
            let queries: [(String, [any PostgresEncodable])]
            if let month {
                let kept =
                    try connection.query(
                        "SELECT 1 FROM tally_log_partitions WHERE month = $1::date AND NOT detach_pending",
                        [month.firstDay]
                    )
                    .count > 0
                queries = [(Self.month, [month.firstDay, month.adding(months: 1).firstDay, kept, month.description])]
            } else {
                queries = [
                    (Self.users, []), (Self.tokens, []), (Self.chargedMonths, []), (Self.keptMonths, []),
                    (Self.reservations, []),
                ]
            }
            var violations: [AuditViolation] = []
            for (index, (query, parameters)) in queries.enumerated() {
                violations += try connection.query(query, parameters).map { row in
                    AuditViolation(userID: try row.decode(0), username: try row.decode(1), problem: try row.decode(2))
                }
                if index == 0 { try afterFirstRead?() }
            }
            return violations
        }
    }

    static let users = """
        WITH ledger_totals AS (
            SELECT user_id, sum(amount) AS balance, -sum(amount) FILTER (WHERE kind = 'charge') AS charges
            FROM ledger GROUP BY user_id
        ), usage_totals AS (
            SELECT user_id, sum(quota) AS quota, sum(requests) AS requests FROM usage_rollups GROUP BY user_id
        ), checked AS (
            SELECT u.id, u.username, b.quota, b.used_quota, b.request_count,
                   coalesce(l.balance, 0) AS ledger_balance, coalesce(l.charges, 0) AS ledger_charges,
                   coalesce(r.quota, 0) AS logged_quota, coalesce(r.requests, 0) AS logged_requests
            FROM users u JOIN user_balances b ON b.id = u.id
                 LEFT JOIN ledger_totals l ON l.user_id = u.id LEFT JOIN usage_totals r ON r.user_id = u.id
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
        WITH usage_totals AS (
            SELECT token_id, sum(quota) AS quota, sum(requests) AS requests FROM usage_rollups GROUP BY token_id
        ), ledger_totals AS (
            SELECT token_id, -sum(amount) AS charges FROM ledger WHERE kind = 'charge' GROUP BY token_id
        )
        SELECT t.user_id, u.username, concat_ws('; ',
            CASE WHEN t.used_quota <> coalesce(r.quota, 0) OR t.request_count <> coalesce(r.requests, 0) THEN
                format('token %s: used_quota %s / request_count %s but logged requests cost %s in %s requests',
                       t.id, t.used_quota, t.request_count, coalesce(r.quota, 0), coalesce(r.requests, 0)) END,
            CASE WHEN t.used_quota <> coalesce(l.charges, 0) THEN
                format('token %s: used_quota %s but ledger charges sum to %s', t.id, t.used_quota, coalesce(l.charges, 0)) END)
        FROM token_balances t JOIN users u ON u.id = t.user_id LEFT JOIN usage_totals r ON r.token_id = t.id
             LEFT JOIN ledger_totals l ON l.token_id = t.id
        WHERE t.used_quota <> coalesce(r.quota, 0) OR t.request_count <> coalesce(r.requests, 0)
           OR t.used_quota <> coalesce(l.charges, 0)
        ORDER BY t.id
        """

    static let reservations = """
        WITH user_holds AS (
            SELECT user_id, sum(amount) AS amount FROM holds WHERE status = 'held' GROUP BY user_id
        ), token_holds AS (
            SELECT token_id, sum(amount) AS amount FROM holds WHERE status = 'held' AND token_reserved GROUP BY token_id
        ), user_leased AS (
            SELECT user_id, sum(amount) AS amount FROM user_leases GROUP BY user_id
        ), token_leased AS (
            SELECT token_id, sum(amount) AS amount FROM token_leases GROUP BY token_id
        )
        SELECT u.id, (SELECT username FROM users WHERE id = u.id), format('reserved %s but open holds reserve %s and leases %s',
                                        u.reserved, coalesce(h.amount, 0), coalesce(l.amount, 0))
        FROM user_balances u LEFT JOIN user_holds h ON h.user_id = u.id LEFT JOIN user_leased l ON l.user_id = u.id
        WHERE u.reserved <> coalesce(h.amount, 0) + coalesce(l.amount, 0)
        UNION ALL
        SELECT t.user_id, u.username, format('token %s: reserved %s but open holds reserve %s and leases %s',
                                             t.id, t.reserved, coalesce(h.amount, 0), coalesce(l.amount, 0))
        FROM token_balances t JOIN users u ON u.id = t.user_id LEFT JOIN token_holds h ON h.token_id = t.id
             LEFT JOIN token_leased l ON l.token_id = t.id
        WHERE t.reserved <> coalesce(h.amount, 0) + coalesce(l.amount, 0)
        ORDER BY 1
        """

    /// The ledger's charges against the rollups, per user and month, for every month: what
    /// `--month` checks for one, so that a charge booked in the wrong month (its total right)
    /// cannot pass the whole audit and show only in that month's statement and exports.
    static let chargedMonths = """
        WITH charges AS (
            SELECT user_id, month, -sum(amount) AS quota FROM ledger WHERE kind = 'charge' GROUP BY 1, 2
        ), rollups AS (
            SELECT user_id, date_trunc('month', day)::date AS month, sum(quota) AS quota FROM usage_rollups GROUP BY 1, 2
        )
        SELECT user_id, coalesce(u.username, ''), format('%s: ledger charges %s but usage rollups (exports) sum to %s',
               to_char(month, 'YYYY-MM'), coalesce(c.quota, 0), coalesce(r.quota, 0))
        FROM charges c FULL JOIN rollups r USING (user_id, month) LEFT JOIN users u ON u.id = user_id
        WHERE coalesce(c.quota, 0) <> coalesce(r.quota, 0)
        ORDER BY user_id, month
        """

    /// The rollups against the request rows, per user and month, for the months still kept.
    static let keptMonths = """
        WITH logs AS (
            SELECT user_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month,
                   sum(quota) AS quota, count(*) AS requests
            FROM request_logs GROUP BY 1, 2
        ), rollups AS (
            SELECT user_id, date_trunc('month', day)::date AS month, sum(quota) AS quota, sum(requests) AS requests
            FROM usage_rollups
            WHERE date_trunc('month', day)::date IN (SELECT month FROM tally_log_partitions WHERE NOT detach_pending)
            GROUP BY 1, 2
        )
        SELECT user_id, coalesce(u.username, ''), format('%s: usage rollups %s units in %s requests but request rows %s units in %s requests',
               to_char(month, 'YYYY-MM'), coalesce(r.quota, 0), coalesce(r.requests, 0), coalesce(l.quota, 0), coalesce(l.requests, 0))
        FROM logs l FULL JOIN rollups r USING (user_id, month) LEFT JOIN users u ON u.id = user_id
        WHERE l.quota IS DISTINCT FROM r.quota OR l.requests IS DISTINCT FROM r.requests
        ORDER BY user_id, month
        """

    /// One month: ledger charges ($1 = first day) against the rollups, and the rollups against
    /// the request rows when the month's partition is kept ($3).
    static let month = """
        WITH charges AS (
            SELECT user_id, -sum(amount) AS quota FROM ledger WHERE month = $1::date AND kind = 'charge' GROUP BY user_id
        ), rollups AS (
            SELECT user_id, sum(quota) AS quota, sum(requests) AS requests FROM usage_rollups
            WHERE day >= $1::date AND day < $2::date GROUP BY user_id
        ), logs AS (
            SELECT user_id, sum(quota) AS quota, count(*) AS requests FROM request_logs
            WHERE $3::boolean AND created_at >= $1::date::timestamp AT TIME ZONE 'UTC'
              AND created_at < $2::date::timestamp AT TIME ZONE 'UTC'
            GROUP BY user_id
        ), checked AS (
            SELECT user_id, coalesce(c.quota, 0) AS charged, coalesce(r.quota, 0) AS rolled, coalesce(r.requests, 0) AS rolled_requests,
                   coalesce(l.quota, 0) AS logged, coalesce(l.requests, 0) AS logged_requests
            FROM charges c FULL JOIN rollups r USING (user_id) FULL JOIN logs l USING (user_id)
        )
        SELECT user_id, coalesce(u.username, ''), concat_ws('; ',
            CASE WHEN charged <> rolled THEN format('%s: ledger charges %s but usage rollups (exports) sum to %s', $4::text, charged, rolled) END,
            CASE WHEN $3::boolean AND (rolled <> logged OR rolled_requests <> logged_requests)
                 THEN format('%s: usage rollups %s units in %s requests but request rows %s units in %s requests',
                             $4::text, rolled, rolled_requests, logged, logged_requests) END)
        FROM checked LEFT JOIN users u ON u.id = user_id
        WHERE charged <> rolled OR ($3::boolean AND (rolled <> logged OR rolled_requests <> logged_requests))
        ORDER BY user_id
        """
}
