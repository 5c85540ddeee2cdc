import Testing

@testable import TallyServer

/// Found by a review: exports held pool connections at their readers' pace with no cap, so a few
/// slow readers (any signed-in user may export their own usage) held the whole pool.
@Suite("export slots")
struct ExportSlotsTests {
    @Test("half the pool in all, two per caller; a slot waits, then 429 too_many_exports")
    func capped() async throws {
        let slots = ExportSlots(poolSize: 6, perCaller: 2, wait: .milliseconds(100))
        #expect(slots.capacity == 3)
        try await slots.acquire(caller: 1)
        try await slots.acquire(caller: 1)
        await #expect(throws: ExportSlots.busy) { try await slots.acquire(caller: 1) }
        try await slots.acquire(caller: 2)
        await #expect(throws: ExportSlots.busy) { try await slots.acquire(caller: 3) }
        // A slot freed while one waits is taken by the waiter.
        async let waiting: Void = slots.acquire(caller: 3)
        try await Task.sleep(for: .milliseconds(30))
        slots.release(caller: 1)
        try await waiting
        await #expect(throws: ExportSlots.busy) { try await slots.acquire(caller: 2) }
        for caller: Int64 in [1, 2, 3] { slots.release(caller: caller) }
        try await slots.acquire(caller: 1)
        try await slots.acquire(caller: 1)
    }
}
