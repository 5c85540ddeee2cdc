import CLibPQ

/// An error from PostgreSQL or from libpq, carrying the SQLSTATE when the server sent one.
///
/// The description never contains the connection string, so a password in `DATABASE_URL`
/// cannot leak through logs or HTTP responses; nor the server's detail, which for a violated
/// constraint is the whole row ("Failing row contains (…)": a secret, a hash).
public struct PostgresError: Error, Sendable, CustomStringConvertible {
    /// What failed, coarsely: callers map `.connection` to 503 and retry later.
    public enum Kind: String, Sendable {
        case connection, query, copy, decode, pool
    }

    public var kind: Kind
    /// Five-character SQLSTATE (`23505` for unique_violation), when the server sent one.
    public var sqlState: String?
    /// The primary message (libpq's `PG_DIAG_MESSAGE_PRIMARY`, or libpq's own message).
    public var message: String
    /// The server's detail (`PG_DIAG_MESSAGE_DETAIL`); may quote row values, so it is kept out of
    /// ``description``.
    public var detail: String?

    public init(kind: Kind, sqlState: String? = nil, message: String, detail: String? = nil) {
        self.kind = kind
        self.sqlState = sqlState
        self.message = message
        self.detail = detail
    }

    public var description: String {
        var text = "PostgreSQL \(kind.rawValue) error"
        if let sqlState { text += " [\(sqlState)]" }
        text += ": \(message)"
        return text
    }

    /// True when the connection itself failed (server down, restarted, network), or, on Citus,
    /// the coordinator's connection to a worker did (a worker that cannot be reached is 08006;
    /// one lost inside a COPY comes back as XX000 with one of ``citusLostWorker``'s messages).
    public var isConnectionFailure: Bool {
        kind == .connection
            || (sqlState.map { $0.hasPrefix("08") || $0 == "57P01" || $0 == "57P02" || $0 == "57P03" } ?? false)
            || (sqlState == SQLState.internalError && Self.citusLostWorker.contains { message.hasPrefix($0) })
    }

    /// True when PostgreSQL answered the statement with an error of its own on a live connection:
    /// it rolled back and stored nothing. A broken connection (or Citus's lost worker), or an
    /// answer that could not be read, may hide a commit.
    public var provesRollback: Bool { sqlState != nil && !isConnectionFailure }

    /// How Citus reports, as XX000, a worker connection lost mid-statement: its own message, or
    /// the worker's (a worker's backend ends when its postmaster dies or is shut down).
    static let citusLostWorker = [
        "failure on connection marked as essential", "terminating connection due to",
        "server closed the connection unexpectedly", "connection to the remote node",
    ]

    /// PostgreSQL cannot do the work for now, whatever the request: out of a resource (class 53:
    /// disk, memory, connections), a statement or lock timeout (57014, 55P03), a standby that
    /// refuses writes after a failover (25006), an I/O error (58030). Nothing was stored, and the
    /// caller may try again later.
    public var isTemporary: Bool {
        guard let sqlState else { return false }
        return sqlState.hasPrefix("53") || ["57014", "55P03", "25006", "58030"].contains(sqlState)
    }

    public var isUniqueViolation: Bool { sqlState == SQLState.uniqueViolation }

    /// A row of a partitioned table found no partition (its month's was dropped, or never made).
    /// Citus reports a worker's refusal during a COPY as an internal error with the same text.
    public var isMissingPartition: Bool {
        (sqlState == SQLState.checkViolation || sqlState == SQLState.internalError)
            && message.hasPrefix("no partition of relation")
    }

    /// PostgreSQL aborted the transaction only to let a concurrent one through (a deadlock, a
    /// serialization failure): nothing it did remains, and it may simply run again.
    public var isLostRace: Bool { sqlState == SQLState.deadlockDetected || sqlState == SQLState.serializationFailure }

    /// A unique violation, also as Citus reports one that a worker raised during a COPY into a
    /// distributed table: with the worker's message but SQLSTATE XX000 (internal_error).
    public var isUniqueViolationInCopy: Bool {
        isUniqueViolation
            || (sqlState == SQLState.internalError
                && message.hasPrefix("duplicate key value violates unique constraint"))
    }
}

/// SQLSTATE codes the store reacts to.
public enum SQLState {
    public static let uniqueViolation = "23505"
    public static let foreignKeyViolation = "23503"
    public static let checkViolation = "23514"
    public static let serializationFailure = "40001"
    public static let deadlockDetected = "40P01"
    public static let duplicateDatabase = "42P04"
    public static let undefinedTable = "42P01"
    public static let adminShutdown = "57P01"
    public static let lockNotAvailable = "55P03"
    public static let queryCanceled = "57014"
    public static let internalError = "XX000"
}

// libpq's PG_DIAG_* codes are character macros that do not import into Swift.
private let diagSQLState = Int32(UInt8(ascii: "C"))
private let diagMessagePrimary = Int32(UInt8(ascii: "M"))
private let diagMessageDetail = Int32(UInt8(ascii: "D"))

extension PostgresError {
    /// Builds an error from a failed result, falling back to the connection's message.
    static func from(result: OpaquePointer?, connection: OpaquePointer?, kind: Kind) -> PostgresError {
        func field(_ code: Int32) -> String? {
            guard let result, let pointer = PQresultErrorField(result, code) else { return nil }
            return String(cString: pointer)
        }
        let connectionBroken = connection.map { PQstatus($0) != CONNECTION_OK } ?? true
        let message =
            field(diagMessagePrimary)
            ?? connection.flatMap { PQerrorMessage($0) }.map { String(cString: $0) }?.trimmingTrailingNewlines()
            ?? "unknown error"
        return PostgresError(
            kind: connectionBroken ? .connection : kind,
            sqlState: field(diagSQLState),
            message: message,
            detail: field(diagMessageDetail)
        )
    }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var text = self
        while text.last == "\n" { text.removeLast() }
        return text
    }
}
