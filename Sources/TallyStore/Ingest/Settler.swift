import Synchronization
import TallyPostgres

/// The fold half of ingest (migration 0010, docs/ingest.md): adds what committed batches still
/// owe to balances and holds' reservations (`pending_charges`, each account once per fold) and,
/// less often, to `usage_daily` (`pending_usage`, many batches per upsert) — each in the
/// transaction that deletes the pending rows, so every fold is exactly once whatever crashes,
/// and any number of settlers may run at once.
public struct Settler: Sendable {
    let pool: PostgresPool
    /// Accounts are spread over this many shards (user id mod shards); a fold claims the shards
    /// no other settler holds at that moment. Every instance uses the same count.
    public let shards: Int
    /// The most accounts one balance fold takes.
    public let accountsPerFold: Int
    /// The last account the last balance fold picked: the next pick starts after it, so the
    /// folds go round the queue (migration 0032) instead of starting at its front every time.
    private let lastPicked = LastPicked()

    private final class LastPicked: Sendable {
        let id = Atomic<Int64>(0)
    }

    /// The shard count of every settler (the advisory locks of one shard count exclude only
    /// settlers with the same count).
    public static let defaultShards = 16

    public init(pool: PostgresPool, shards: Int = defaultShards, accountsPerFold: Int = 5_000) {
        self.pool = pool
        self.shards = shards
        self.accountsPerFold = accountsPerFold
    }

    /// Folds the pending charges of the shards it can claim into balances, one transaction per
    /// `accountsPerFold` accounts, while a fold comes back full. Accounts locked at that moment
    /// (a lease refill, a top-up) are left for the next call. Returns the accounts folded.
    @discardableResult
    public func foldBalances() async throws -> Int {
        var folded = 0
        while true {
            let after = lastPicked.id.load(ordering: .relaxed)
            let (accounts, last) = try await pool.withConnection { [shards, accountsPerFold] connection in
                let row = try connection.query(Self.settle, [shards, accountsPerFold, after])[0]
                return (try row.decode(0, as: Int.self), try row.decode(1, as: Int64.self))
            }
            lastPicked.id.store(last, ordering: .relaxed)
            folded += accounts
            if accounts < accountsPerFold { return folded }
        }
    }

    /// Rolls the pending usage of the shards it can claim up into `usage_daily`, and what
    /// batches charged per channel into the channels (unless another settler is doing that).
    /// Returns the pending usage rows consumed.
    @discardableResult
    public func rollUp() async throws -> Int {
        try await pool.withConnection { [shards] connection in
            let rows = try connection.query(Self.rollUpShards, [shards, false])[0].decode(0, as: Int.self)
            try connection.query(Self.foldChannels, [false])
            return rows
        }
    }

    /// Folds and rolls up everything pending now, waiting for accounts and shards others hold:
    /// for the end of a bulk `tally ingest`, and for tests that read the folded columns
    /// themselves. Returns the number of accounts folded.
    @discardableResult
    public func foldAll() async throws -> Int {
        try await pool.withConnection { [shards] connection in
            let folded = try connection.query(Self.foldEverything)[0].decode(0, as: Int.self)
            _ = try connection.query(Self.rollUpShards, [shards, true])
            try connection.query(Self.foldChannels, [true])
            return folded
        }
    }

    static let settle = PreparedStatement("settler_tick", "SELECT folded, last_picked FROM tally_settle($1, $2, $3)")
    static let rollUpShards = PreparedStatement("settler_roll_up", "SELECT tally_roll_up($1, $2)")
    static let foldEverything = PreparedStatement("settler_fold_all", "SELECT tally_fold(NULL, false)")
    static let foldChannels = PreparedStatement("settler_fold_channels", "SELECT tally_fold_channel_usage($1)")
}
