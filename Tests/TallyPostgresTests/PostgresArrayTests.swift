import TallyPostgres
import TallyTestSupport
import Testing

@Suite("array parameters")
struct PostgresArrayTests {
    /// Text that PostgreSQL's array input would misread unless quoted and escaped.
    static let awkwardTexts = [
        "", "NULL", "null", "plain", "with space", " leading and trailing ", "a,b", "{braces}", "quote\"inside",
        "back\\slash", "\\\"", "\"", "\\", "ends with backslash\\", "tab\tand\nnewline", "héllo – 世界 🚀",
        "req-01J9Z3KQ7T", String(repeating: "x\"y\\", count: 100),
    ]

    @Test("text arrays reach PostgreSQL element for element, in order")
    func textRoundTrip() async throws {
        let db = try await TestDatabase.shared("postgres")
        let stored = try await db.pool.withConnection { connection in
            try connection.query(
                "SELECT element FROM unnest($1::text[]) WITH ORDINALITY AS a(element, position) ORDER BY position",
                [PostgresArray.text(Self.awkwardTexts)]
            ).map { try $0.decode(0, as: String.self) }
        }
        #expect(stored == Self.awkwardTexts)
    }

    @Test("integer arrays reach PostgreSQL element for element, extremes and one-digit values included")
    func integersRoundTrip() async throws {
        let values: [Int64] = [0, 1, 9, 10, -1, -9, -10, 99, 100, 1_234_567_890, .max, .min, .min + 1]
        let db = try await TestDatabase.shared("postgres")
        let stored = try await db.pool.withConnection { connection in
            try connection.query(
                "SELECT element FROM unnest($1::bigint[]) WITH ORDINALITY AS a(element, position) ORDER BY position",
                [PostgresArray.integers(values)]
            ).map { try $0.decode(0, as: Int64.self) }
        }
        #expect(stored == values)
    }

    @Test("empty arrays are empty, not one empty element")
    func emptyArrays() async throws {
        #expect(PostgresArray.text([]) == "{}")
        #expect(PostgresArray.integers([]) == "{}")
        let db = try await TestDatabase.shared("postgres")
        let lengths = try await db.pool.withConnection { connection in
            try connection.query(
                "SELECT cardinality($1::text[]), cardinality($2::bigint[])",
                [PostgresArray.text([]), PostgresArray.integers([])]
            ).map { [try $0.decode(0, as: Int64.self), try $0.decode(1, as: Int64.self)] }
        }
        #expect(lengths == [[0, 0]])
    }

    @Test("the literal's text: every element quoted, only quote and backslash escaped")
    func literalText() {
        #expect(PostgresArray.text(["a", "b\"c", "d\\e", "NULL"]) == #"{"a","b\"c","d\\e","NULL"}"#)
        #expect(PostgresArray.integers([3, -42, 1_000]) == "{3,-42,1000}")
    }
}
