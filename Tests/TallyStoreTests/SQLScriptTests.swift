import TallyStore
import Testing

/// The migrator sends a migration one statement at a time (Citus refuses some DDL sent with
/// other commands); these need no database.
@Suite("SQL scripts cut into statements")
struct SQLScriptTests {
    @Test("semicolons end statements only outside strings, identifiers, comments and dollar-quoted bodies")
    func cutsAtTopLevelSemicolons() {
        let script = """
            -- a leading comment; with a semicolon
            CREATE TABLE "odd;name" (note text DEFAULT 'it''s; fine');
            /* a block; /* nested; */ comment */
            CREATE FUNCTION f(p bigint) RETURNS bigint LANGUAGE plpgsql AS $$
            BEGIN
                RETURN p + 1;  -- $1 is not a quote
            END;
            $$;
            CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $body$ SELECT 'a;b' $body$;
            SELECT $1::int;
            -- only a comment at the end;
            """
        let statements = SQLScript.statements(script)
        #expect(statements.count == 4)
        #expect(statements[0].hasPrefix("-- a leading comment; with a semicolon\nCREATE TABLE \"odd;name\""))
        #expect(statements[0].hasSuffix("'it''s; fine')"))
        #expect(statements[1].contains("RETURN p + 1;  -- $1 is not a quote\nEND;\n$$"))
        #expect(statements[2].hasSuffix("$body$ SELECT 'a;b' $body$"))
        #expect(statements[3].hasSuffix("SELECT $1::int"))
    }

    @Test("every bundled migration cuts into statements that add up to the whole file")
    func bundledMigrationsCutLosslessly() throws {
        for migration in try Migration.bundled() {
            let statements = SQLScript.statements(migration.sql)
            #expect(!statements.isEmpty, "\(migration.name)")
            let significant = { (text: String) in text.filter { !$0.isWhitespace && $0 != ";" } }
            // What is dropped is only whitespace, separators and a trailing comment-only piece.
            #expect(
                significant(migration.sql).hasPrefix(significant(statements.joined())), "\(migration.name)")
        }
    }
}
