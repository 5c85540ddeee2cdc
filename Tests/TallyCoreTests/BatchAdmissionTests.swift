import Testing

@testable import TallyCore

@Suite("batch admission: streams, then batches read whole, then a queue")
struct BatchAdmissionTests {
    @Test("streams first, then whole reads, then the rest wait in arrival order")
    func order() {
        var admission = BatchAdmission(streams: 2, whole: 1)
        #expect(admission.arrive(1) == .stream)
        #expect(admission.arrive(2) == .stream)
        #expect(admission.arrive(3) == .whole)
        #expect(admission.arrive(4) == nil)
        #expect(admission.arrive(5) == nil)
        #expect(admission.waiting == [4, 5])
        // A stream ends: the first waiting batch streams.
        let admitted = admission.end(.stream)
        #expect(admitted.map(\.id) == [4] && admitted.map(\.kind) == [.stream])
        // A whole read ends: the next reads whole.
        #expect(admission.end(.whole).map(\.id) == [5])
        #expect(admission.waiting.isEmpty && admission.streaming == 2 && admission.readingWhole == 1)
    }

    @Test("a batch that arrives while others wait queues behind them: a place freed goes to the first waiting")
    func noOvertaking() {
        var admission = BatchAdmission(streams: 1, whole: 1)
        _ = admission.arrive(1)
        _ = admission.arrive(2)
        #expect(admission.arrive(3) == nil)
        // The place freed goes to 3, not to the newcomer 4.
        #expect(admission.end(.whole).map(\.id) == [3])
        #expect(admission.arrive(4) == nil)
        #expect(admission.waiting == [4])
    }

    @Test("a waiting batch that gives up leaves the queue; one admitted is not waiting")
    func leaving() {
        var admission = BatchAdmission(streams: 0, whole: 1)
        #expect(admission.arrive(1) == .whole)
        #expect(admission.arrive(2) == nil)
        #expect(admission.arrive(3) == nil)
        let left = admission.leave(2)
        let leftTwice = admission.leave(2)
        let admittedLeft = admission.leave(1)
        #expect(left && !leftTwice && !admittedLeft)
        #expect(admission.end(.whole).map(\.id) == [3])
        #expect(admission.end(.whole).isEmpty)
        #expect(admission.readingWhole == 0)
    }

    @Test("no streams (TALLY_INGEST_STREAMS=0): every batch is read whole, at least one at a time")
    func wholeOnly() {
        var admission = BatchAdmission(streams: 0, whole: 0)
        #expect(admission.arrive(1) == .whole)
        #expect(admission.arrive(2) == nil)
    }
}
