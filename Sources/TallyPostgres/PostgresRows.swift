import CLibPQ

/// The rows of one query result, in text format. Owns its `PGresult` and clears it on deinit.
public final class PostgresRows: @unchecked Sendable {
    // The PGresult is immutable once returned by libpq, so sharing it for reads is safe.
    private let result: OpaquePointer?
    public let count: Int
    public let columnCount: Int
    /// Rows affected by an INSERT/UPDATE/DELETE (`PQcmdTuples`), 0 for other commands.
    public let affectedRows: Int

    init(result: OpaquePointer?) {
        self.result = result
        count = result.map { Int(PQntuples($0)) } ?? 0
        columnCount = result.map { Int(PQnfields($0)) } ?? 0
        affectedRows = result.flatMap { Int(String(cString: PQcmdTuples($0))) } ?? 0
    }

    deinit { PQclear(result) }

    public var isEmpty: Bool { count == 0 }

    public var columnNames: [String] {
        (0..<columnCount).map { String(cString: PQfname(result, Int32($0))) }
    }

    public subscript(row: Int) -> PostgresRow { PostgresRow(rows: self, index: row) }

    public var first: PostgresRow? { count > 0 ? self[0] : nil }

    /// Iterates the rows in order.
    public func forEach(_ body: (PostgresRow) throws -> Void) rethrows {
        for index in 0..<count { try body(self[index]) }
    }

    public func map<T>(_ transform: (PostgresRow) throws -> T) rethrows -> [T] {
        var values: [T] = []
        values.reserveCapacity(count)
        for index in 0..<count { values.append(try transform(self[index])) }
        return values
    }

    func isNull(_ row: Int, _ column: Int) -> Bool {
        PQgetisnull(result, Int32(row), Int32(column)) == 1
    }

    func text(_ row: Int, _ column: Int) -> String? {
        guard !isNull(row, column) else { return nil }
        return String(cString: PQgetvalue(result, Int32(row), Int32(column)))
    }
}

/// One row of a result; columns are addressed by position, in SELECT order.
public struct PostgresRow {
    let rows: PostgresRows
    let index: Int

    public func isNull(_ column: Int) -> Bool { rows.isNull(index, column) }

    /// The raw text of a column, `nil` for NULL.
    public func text(_ column: Int) -> String? { rows.text(index, column) }

    /// Decodes a non-NULL column; NULL is a decode error.
    public func decode<T: PostgresDecodable>(_ column: Int, as type: T.Type = T.self) throws(PostgresError) -> T {
        guard let text = rows.text(index, column) else {
            throw PostgresError(kind: .decode, message: "column \(column) is NULL, expected \(T.self)")
        }
        return try T(postgresText: text)
    }

    /// Decodes a nullable column.
    public func decodeOptional<T: PostgresDecodable>(_ column: Int, as type: T.Type = T.self) throws(PostgresError)
        -> T?
    {
        guard let text = rows.text(index, column) else { return nil }
        return try T(postgresText: text)
    }
}
