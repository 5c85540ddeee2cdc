import Foundation
import TallyCore
import TallyPostgres

/// A `text[]` parameter, sent as an array literal with every element quoted.
public struct TextArray: PostgresEncodable, Equatable {
    public var elements: [String]

    public init(_ elements: [String]) { self.elements = elements }

    public var postgresText: String? {
        "{"
            + elements.map { element in
                var quoted = "\""
                for character in element {
                    if character == "\"" || character == "\\" { quoted.append("\\") }
                    quoted.append(character)
                }
                return quoted + "\""
            }.joined(separator: ",") + "}"
    }
}

extension TextArray: PostgresDecodable {
    /// Parses PostgreSQL's text output of a one-dimensional `text[]`.
    public init(postgresText text: String) throws(PostgresError) {
        var elements: [String] = []
        let characters = Array(text)
        guard characters.first == "{", characters.last == "}" else {
            throw PostgresError(kind: .decode, message: "not an array literal")
        }
        var index = 1
        let end = characters.count - 1
        while index < end {
            var element = ""
            if characters[index] == "\"" {
                index += 1
                while index < end, characters[index] != "\"" {
                    if characters[index] == "\\" { index += 1 }
                    if index < end { element.append(characters[index]) }
                    index += 1
                }
                index += 1  // closing quote
            } else {
                while index < end, characters[index] != "," {
                    element.append(characters[index])
                    index += 1
                }
            }
            elements.append(element)
            if index < end, characters[index] == "," { index += 1 }
        }
        self.elements = elements
    }
}

/// A page request: 1-based page number and a page size already clamped by the caller.
public struct PageRequest: Sendable, Equatable {
    public var page: Int
    public var size: Int

    public init(page: Int, size: Int) {
        self.page = max(1, page)
        self.size = max(1, size)
    }

    public var offset: Int { (page - 1) * size }
}

/// One page of results and the total count of the filtered set.
public struct Page<Item: Sendable>: Sendable {
    public var items: [Item]
    public var total: Int
    public var request: PageRequest

    public init(items: [Item], total: Int, request: PageRequest) {
        self.items = items
        self.total = total
        self.request = request
    }
}

extension Role: PostgresIntegerEnum {}
extension UserStatus: PostgresIntegerEnum {}
extension TokenStatus: PostgresIntegerEnum {}
extension ChannelStatus: PostgresIntegerEnum {}
extension RedemptionStatus: PostgresIntegerEnum {}

extension PostgresIntegerEnum {
    /// The value as SQL text writes it (its number), so a statement names `TokenStatus.enabled`
    /// rather than a bare 1.
    var sql: Int { rawValue }
}

/// The pauses of ``retryingDeadlocks(pausing:failedSoFar:sleep:_:)``: `tries` in all, the first
/// included; before each later try a pause that doubles from `firstPause`, each drawn at random
/// between its half and itself so that two transactions aborted together do not meet again.
struct DeadlockBackoff: Sendable {
    var tries: Int
    var firstPause: Duration

    /// Ingest batches: 25 ms doubling to 400 ms, about 0.8 s at most over six tries — long
    /// enough for the batch that won to commit (milliseconds once unblocked), short beside a
    /// gateway's own retry.
    static let ingest = DeadlockBackoff(tries: 6, firstPause: .milliseconds(25))

    /// The lease books' calls (leases, returns, journal batches): three tries, pauses of 2.5–5
    /// and 5–10 ms — they lock a few account rows each and commit in milliseconds, and an
    /// authorization waits for them.
    static let leases = DeadlockBackoff(tries: 3, firstPause: .milliseconds(5))

    /// The pause after the `failures`-th lost try (from 1), at the point `fraction` (0...1) of
    /// its random range.
    func pause(afterFailures failures: Int, fraction: Double) -> Duration {
        let longest = firstPause * (1 << min(failures - 1, 20))
        return longest * (0.5 + 0.5 * fraction)
    }
}

/// Runs `body` again when PostgreSQL aborted it to break a deadlock (or a serialization
/// failure), after a pause (``DeadlockBackoff``), for async work whose every try is its own
/// transaction. Retrying at once could meet the same cycle again: on Citus, where a COPY fills
/// its shards in parallel, two batches holding the same ids deadlock whenever each gets ahead
/// on a different shard, and the youngest transaction (the retry) is the one aborted — the
/// pause lets the other commit first. `failedSoFar` counts tries already lost elsewhere (a
/// streamed batch that restarts whole), so the first try here pauses too.
func retryingDeadlocks<T>(
    pausing backoff: DeadlockBackoff, failedSoFar: Int = 0,
    sleep: (Duration) async throws -> Void = { try await Task.sleep(for: $0) },
    _ body: () async throws -> T
) async throws -> T {
    var failures = failedSoFar
    while true {
        if failures > 0 { try await sleep(backoff.pause(afterFailures: failures, fraction: .random(in: 0...1))) }
        do {
            return try await body()
        } catch let error as PostgresError where error.isLostRace && failures + 1 < backoff.tries {
            failures += 1
        }
    }
}

/// SQL fragments shared by the repositories.
enum SQL {
    /// A `timestamptz` column as whole unix seconds.
    static func unix(_ column: String) -> String { "floor(extract(epoch FROM \(column)))::bigint" }

    /// True when an expiry (column `column`, NULL for never: then NULL) has passed, as new-api
    /// compares `expired_time` with the current unix second: a key
    /// (``TokenRules/hasExpired(_:now:)``) or a redemption code works through the second it names.
    /// The interval is taken off now(), not added to the column: Citus refuses a stable function
    /// (timestamptz + interval) of a column in an UPDATE, and CASE or COALESCE around now() there.
    static func expiryPassed(_ column: String) -> String {
        "(\(column) <= now() - interval '\(TokenRules.expiryGraceSeconds) seconds')"
    }

    /// `statement RETURNING columns` for columns that call functions such as ``unix(_:)`` or
    /// now(): Citus evaluates RETURNING on the shards and allows only immutable functions there,
    /// so the rows come back whole (as `t`) and the columns are computed from them.
    static func returning(_ columns: String, from statement: String) -> String {
        "WITH t AS (\(statement) RETURNING *) SELECT \(columns) FROM t"
    }

    /// The sum of a `pending_charges` column (migration 0010) for the account `user` (and its key
    /// `token`): what committed batches owe that the fold has not applied yet. A subquery on the
    /// account's rows, which Citus runs on the account's shard (pending_charges is co-located); it
    /// cannot sit in a query over a CTE there, so statements that return these figures return
    /// them directly (`RETURNING`) or read the row again.
    ///
    /// `account`, when the statement reads one account known up front, is the parameter that
    /// holds it: named inside the subquery too, it lets Citus run the statement on that account's
    /// shard alone (it does not carry the outer `id = $1` into a correlated subquery).
    static func pending(_ column: String, user: String, token: String? = nil, account: String? = nil) -> String {
        let key = token.map { " AND c.token_id = \($0)" } ?? ""
        let known = account.map { " AND c.user_id = \($0)" } ?? ""
        let rows = "pending_charges c WHERE c.user_id = \(user)\(key)\(known)"
        return "(SELECT coalesce(sum(c.\(column)), 0)::bigint FROM \(rows))"
    }
}

extension AuditLog {
    /// Records values of any printable type, rendered as text (the form every audit row uses).
    static func recordChange(
        on connection: PostgresConnection, actor: Actor, action: String, target: String,
        before: [String: any CustomStringConvertible]?, after: [String: any CustomStringConvertible]?
    ) throws {
        try record(
            on: connection, actor: actor, action: action, target: target,
            before: before?.mapValues { "\($0)" }, after: after?.mapValues { "\($0)" })
    }
}
