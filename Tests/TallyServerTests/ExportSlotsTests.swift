import Testing

@testable import TallyServer

/// Found by a review: exports held pool connections at their readers' pace with no cap, so a few
/// slow readers (any signed-in user may export their own usage) held the whole pool.
@Suite("export slots")
struct ExportSlotsTests {
    @Test("half the pool in all, two per caller; a slot waits, then 429 too_many_exports")
    func capped() async throws {
        let slots = ExportSlots(poolSize: 6, streams: 0, perCaller: 2, wait: .milliseconds(100))
        #expect(slots.capacity == 3)
        try await slots.acquire(caller: 1)
        try await slots.acquire(caller: 1)
        await #expect(throws: ExportSlots.busy) { try await slots.acquire(caller: 1) }
        try await slots.acquire(caller: 2)
        await #expect(throws: ExportSlots.busy) { try await slots.acquire(caller: 3) }
        // A slot freed while one waits is taken by the waiter.
        async let waiting: Void = slots.acquire(caller: 3)
        try await Self.untilWaiting(1, slots)
        slots.release(caller: 1)
        try await waiting
        await #expect(throws: ExportSlots.busy) { try await slots.acquire(caller: 2) }
        for caller: Int64 in [1, 2, 3] { slots.release(caller: caller) }
        try await slots.acquire(caller: 1)
        try await slots.acquire(caller: 1)
    }

    /// Found by a review: each capped at half the pool, streamed batches and exports together
    /// could hold all of it.
    @Test("exports take half of what the ingest streams leave of the pool, at least one")
    func sharedWithStreams() {
        #expect(ExportSlots(poolSize: 16, streams: 8).capacity == 4)
        #expect(ExportSlots(poolSize: 16, streams: 0).capacity == 8)
        #expect(ExportSlots(poolSize: 4, streams: 2).capacity == 1)
        #expect(ExportSlots(poolSize: 2, streams: 1).capacity == 1)
    }

    @Test("a freed slot goes to the longest waiter its caller allows, at once; a cancelled waiter leaves the queue")
    func handOff() async throws {
        let slots = ExportSlots(poolSize: 4, streams: 0, perCaller: 1, wait: .seconds(30))
        try await slots.acquire(caller: 1)
        try await slots.acquire(caller: 2)
        let order = Order()
        // Caller 1 waits for its own second slot (its limit is 1); 3 and then 4 wait for any.
        let second = Task {
            try await slots.acquire(caller: 1)
            await order.add(1)
        }
        try await Self.untilWaiting(1, slots)
        let third = Task {
            try await slots.acquire(caller: 3)
            await order.add(3)
        }
        try await Self.untilWaiting(2, slots)
        let fourth = Task {
            try await slots.acquire(caller: 4)
            await order.add(4)
        }
        try await Self.untilWaiting(3, slots)
        third.cancel()
        await #expect(throws: CancellationError.self) { try await third.value }
        // Caller 2's slot: caller 1 still holds its one, so 4 gets it (3 left the queue).
        slots.release(caller: 2)
        try await fourth.value
        #expect(await order.callers == [4])
        // Caller 1's slot: its own waiter, which its limit now allows.
        slots.release(caller: 1)
        try await second.value
        #expect(await order.callers == [4, 1])
    }

    @Test("waiters are served oldest first")
    func oldestFirst() async throws {
        let slots = ExportSlots(poolSize: 2, streams: 0, perCaller: 2, wait: .seconds(30))
        try await slots.acquire(caller: 1)
        let order = Order()
        var waiting: [Task<Void, any Error>] = []
        for caller: Int64 in 2...6 {
            waiting.append(
                Task {
                    try await slots.acquire(caller: caller)
                    await order.add(caller)
                })
            try await Self.untilWaiting(waiting.count, slots)
        }
        var holder: Int64 = 1
        for (index, task) in waiting.enumerated() {
            slots.release(caller: holder)
            try await task.value
            holder = Int64(index + 2)
        }
        #expect(await order.callers == [2, 3, 4, 5, 6])
    }

    /// Until `count` exports wait (so the next one queues behind them).
    static func untilWaiting(_ count: Int, _ slots: ExportSlots) async throws {
        while slots.waiting < count { try await Task.sleep(for: .milliseconds(1)) }
    }

    actor Order {
        var callers: [Int64] = []
        func add(_ caller: Int64) { callers.append(caller) }
    }
}
