import Synchronization
import TallyCore
import Testing

/// The group-commit primitive under the hold journal and the lease refills: at most `limit`
/// calls at once, whatever queued meanwhile in the next call, every item its own answer.
@Suite("Coalescer")
struct CoalescerTests {
    /// Counts the calls in flight and the largest number seen at once.
    final class Calls: Sendable {
        private let state = Mutex((inFlight: 0, most: 0, calls: 0, items: [[Int]]()))

        func enter(_ items: [Int]) {
            state.withLock {
                $0.inFlight += 1
                $0.most = max($0.most, $0.inFlight)
                $0.calls += 1
                $0.items.append(items)
            }
        }

        func leave() { state.withLock { $0.inFlight -= 1 } }
        var most: Int { state.withLock { $0.most } }
        var calls: Int { state.withLock { $0.calls } }
        var batches: [[Int]] { state.withLock { $0.items } }
    }

    /// A call that takes a few milliseconds and answers each item with its double.
    static func doubling(_ calls: Calls) -> Coalescer<Int, Int>.Call {
        { items in
            calls.enter(items)
            defer { calls.leave() }
            try await Task.sleep(for: .milliseconds(5))
            return items.map { $0 * 2 }
        }
    }

    static func submitAll(_ count: Int, to coalescer: Coalescer<Int, Int>) async throws -> [Int: Int] {
        try await withThrowingTaskGroup(of: (Int, Int).self) { group in
            for item in 0..<count { group.addTask { (item, try await coalescer.submit(item)) } }
            return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
    }

    @Test("every item answered with its own answer, each sent exactly once", arguments: [1, 3])
    func everyItemAnswered(limit: Int) async throws {
        let calls = Calls()
        let coalescer = Coalescer(limit: limit, call: Self.doubling(calls))
        let answers = try await Self.submitAll(300, to: coalescer)
        #expect(answers == Dictionary(uniqueKeysWithValues: (0..<300).map { ($0, $0 * 2) }))
        #expect(calls.batches.flatMap { $0 }.sorted() == Array(0..<300))
        #expect(calls.most <= limit)
    }

    @Test("with `limit` calls in flight, the next item waits for one of them to end", arguments: [1, 3])
    func limitHolds(limit: Int) async throws {
        let calls = Calls()
        let gate = Mutex(false)
        // Each call waits until the gate opens (5 s at most).
        let coalescer = Coalescer<Int, Int>(limit: limit) { items in
            calls.enter(items)
            defer { calls.leave() }
            for _ in 0..<5_000 where !gate.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(1)) }
            return items
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            // One item per call until `limit` calls are in flight.
            for item in 0..<limit {
                group.addTask { _ = try await coalescer.submit(item) }
                while calls.calls <= item { try await Task.sleep(for: .milliseconds(1)) }
            }
            group.addTask { _ = try await coalescer.submit(limit) }
            try await Task.sleep(for: .milliseconds(50))
            #expect(calls.calls == limit, "the item past the limit started a call of its own")
            gate.withLock { $0 = true }
            try await group.waitForAll()
        }
        #expect(calls.most == limit)
        #expect(calls.batches.last == [limit])
    }

    @Test("items submitted while a call is in flight go out together in the next")
    func queuedItemsShareACall() async throws {
        let calls = Calls()
        let coalescer = Coalescer(limit: 1, call: Self.doubling(calls))
        _ = try await Self.submitAll(300, to: coalescer)
        // 300 items, 5 ms a call, one call at a time: far fewer calls than items.
        #expect(calls.calls < 100)
        #expect(calls.batches.contains { $0.count > 1 })
    }

    @Test("an item submitted while a call is in flight starts another call when the limit allows")
    func callsOverlap() async throws {
        let calls = Calls()
        // Each call waits (2 s at most) until another is in flight beside it.
        let coalescer = Coalescer<Int, Int>(limit: 4) { items in
            calls.enter(items)
            defer { calls.leave() }
            for _ in 0..<2_000 where calls.most < 2 { try await Task.sleep(for: .milliseconds(1)) }
            return items
        }
        async let first = coalescer.submit(1)
        while calls.calls == 0 { try await Task.sleep(for: .milliseconds(1)) }
        #expect(try await coalescer.submit(2) == 2)
        #expect(try await first == 1)
        #expect(calls.batches == [[1], [2]])
        #expect(calls.most == 2)
    }

    struct Refused: Error {}

    @Test("a failed call fails its own items only; the next call goes on")
    func failureStaysWithItsCall() async throws {
        let coalescer = Coalescer<Int, Int>(limit: 1) { items in
            if items.contains(-1) { throw Refused() }
            return items
        }
        await #expect(throws: Refused.self) { try await coalescer.submit(-1) }
        #expect(try await coalescer.submit(7) == 7)
    }

    @Test("a call that answers more or fewer items than it was given fails them all")
    func answerCountMismatch() async throws {
        let coalescer = Coalescer<Int, Int>(limit: 1) { _ in [] }
        await #expect(throws: CoalescerError.self) { try await coalescer.submit(1) }
    }
}
