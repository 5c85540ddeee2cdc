import Foundation
import TallyTestSupport
import Testing

/// The test helpers fail loudly: a helper that turns a failure into a plausible value lets a
/// broken feature pass the tests that use it.
@Suite("test helpers fail loudly")
struct TestSupportTests {
    @Test("scalar: NULL and a missing row throw instead of reading as 0; optionalScalar reads NULL as nil")
    func scalarRefusesNull() async throws {
        let db = try await TestDatabase.shared("testsupport")
        await #expect(throws: TestClusterError.self) { try await db.scalar("SELECT NULL::bigint") }
        await #expect(throws: TestClusterError.self) { try await db.scalar("SELECT 1 WHERE false") }
        #expect(try await db.optionalScalar("SELECT NULL::bigint") == nil)
        #expect(try await db.scalar("SELECT 0") == 0)
    }

    @Test("TallyBinary.run: an exit other than the expected one throws with the command's stderr")
    func binaryExitIsChecked() async throws {
        let db = try await TestDatabase.shared("testsupport")
        let failed = #expect(throws: TallyRunError.self) {
            try TallyBinary.run(["export", "--month", "not-a-month"], databaseURL: db.url)
        }
        #expect(failed?.run.status != 0)
        #expect(failed?.run.errorOutput.isEmpty == false, "stderr is kept")
        #expect(failed?.description.contains(failed?.run.errorOutput.suffix(40) ?? "-") == true)
        #expect(throws: TallyRunError.self) {
            try TallyBinary.run(["audit"], databaseURL: db.url, expecting: .failure)
        }
        #expect(try TallyBinary.run(["audit", "--month", "x"], databaseURL: db.url, expecting: .any).status != 0)
    }

    @Test("IngestFigures: a run that acknowledged nothing is not clean")
    func nothingAcknowledgedIsNotClean() {
        var figures = IngestFigures()
        figures.auditStatus = 0
        #expect(!figures.isClean)
        figures.ackedLines = 1
        #expect(figures.isClean)
    }
}
