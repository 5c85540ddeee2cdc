import TallyPostgres

/// The fold half of ingest (migration 0010, docs/ingest.md): adds what committed batches still
/// owe (`pending_usage`, `pending_returns`) to balances, holds' reservations and `usage_daily`,
/// each account once per fold, in the transaction that deletes the pending rows — so a fold
/// is exactly once whatever crashes, and any number of settlers may run at once.
public struct Settler: Sendable {
    let pool: PostgresPool
    /// Accounts are spread over this many shards (user id mod shards); each tick claims the
    /// shards no other settler holds at that moment.
    public let shards: Int
    /// The most accounts one fold transaction takes.
    public let accountsPerFold: Int

    public init(pool: PostgresPool, shards: Int = 16, accountsPerFold: Int = 5_000) {
        self.pool = pool
        self.shards = shards
        self.accountsPerFold = accountsPerFold
    }

    /// One tick: folds the waiting accounts of the shards it can claim, one transaction per
    /// `accountsPerFold` accounts, while a fold comes back full. Accounts locked at that moment
    /// (a lease refill, a top-up) are left for the next tick. Returns the accounts it folded.
    @discardableResult
    public func tick() async throws -> Int {
        var folded = 0
        while true {
            let accounts = try await pool.withConnection { [shards, accountsPerFold] connection in
                try connection.query(Self.settle, [shards, accountsPerFold])[0].decode(0, as: Int.self)
            }
            folded += accounts
            if accounts < accountsPerFold { return folded }
        }
    }

    /// Folds everything pending now, waiting for accounts others hold locked: for the end of a
    /// bulk `tally ingest`, and for tests that read the folded columns themselves. Returns the
    /// number of accounts folded.
    @discardableResult
    public func foldAll() async throws -> Int {
        try await pool.withConnection { connection in
            try connection.query(Self.foldEverything)[0].decode(0, as: Int.self)
        }
    }

    static let settle = PreparedStatement("settler_tick", "SELECT tally_settle($1, $2)")
    static let foldEverything = PreparedStatement("settler_fold_all", "SELECT tally_fold(NULL, false)")
}
