import TallyPostgres
import Testing

/// COPY text as PostgreSQL reads it (tab between fields, `\N` for NULL, backslash escapes), no
/// database needed: the COPY round trip itself is in PostgresConnectionTests.
@Suite("COPY text rows")
struct CopyRowTests {
    private func text(_ build: (inout CopyRow) -> Void) -> String {
        var row = CopyRow()
        build(&row)
        return String(decoding: row.bytes, as: UTF8.self)
    }

    @Test(
        "text is written whole or with its tab, newline, carriage return and backslash escaped",
        arguments: [
            ("", ""), ("plain", "plain"), ("ünï", "ünï"), ("\t", "\\t"), ("a\tb", "a\\tb"),
            ("line\n", "line\\n"), ("\r\nx", "\\r\\nx"), ("C:\\dir\\", "C:\\\\dir\\\\"),
            ("\\\t\n\r", "\\\\\\t\\n\\r"), ("a]b^c|", "a]b^c|"),
        ])
    func escapes(raw: String, written: String) {
        #expect(text { $0.append(raw) } == written)
    }

    @Test(
        "integers in decimal, the extremes included",
        arguments: [
            (Int64(0), "0"), (7, "7"), (-7, "-7"), (1_000_000, "1000000"), (-90, "-90"),
            (.max, "9223372036854775807"), (.min, "-9223372036854775808"),
        ])
    func integers(value: Int64, written: String) {
        #expect(text { $0.append(value) } == written)
    }

    @Test("fields are tab-separated, NULL is \\N, a row ends with a newline and reset empties it")
    func rows() {
        var row = CopyRow()
        row.append("x")
        row.append(nil as String?)
        row.append(nil as Int64?)
        row.append(Int64(42))
        row.append(true)
        row.endRow()
        #expect(String(decoding: row.bytes, as: UTF8.self) == "x\t\\N\t\\N\t42\tt\n")
        row.reset()
        row.append(false)
        row.endRow()
        #expect(String(decoding: row.bytes, as: UTF8.self) == "f\n")
    }
}
