import TallyCore
import Testing

@Suite("repeated warnings")
struct RepeatedWarningsTests {
    @Test("the first of a kind is logged, then one per interval saying how many were left out")
    func onePerInterval() {
        var warnings = RepeatedWarnings(interval: 10)
        #expect(warnings.admit("database unavailable", at: 100) == 0)
        for second in stride(from: 100.5, to: 110, by: 0.5) {
            #expect(warnings.admit("database unavailable", at: second) == nil)
        }
        #expect(warnings.admit("database unavailable", at: 110) == 19)
        #expect(warnings.admit("database unavailable", at: 115) == nil)
        #expect(warnings.admit("database unavailable", at: 121) == 1)
    }

    @Test("each kind has its own interval")
    func kindsApart() {
        var warnings = RepeatedWarnings(interval: 10)
        #expect(warnings.admit("database unavailable", at: 0) == 0)
        #expect(warnings.admit("folding pending charges failed", at: 1) == 0)
        #expect(warnings.admit("database unavailable", at: 2) == nil)
        #expect(warnings.admit("folding pending charges failed", at: 3) == nil)
        #expect(warnings.admit("hold sweep failed", at: 3) == 0)
    }

    @Test("after a quiet spell the next occurrence is logged at once")
    func quietSpell() {
        var warnings = RepeatedWarnings(interval: 10)
        #expect(warnings.admit("webhook outbox poll failed", at: 0) == 0)
        #expect(warnings.admit("webhook outbox poll failed", at: 3600) == 0)
    }
}
