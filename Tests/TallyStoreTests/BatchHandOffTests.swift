import Dispatch
import Synchronization
import TallyStore
import Testing

@Suite("the hand-off from a request to its batch's transaction")
struct BatchHandOffTests {
    /// Receives one part on a thread of its own, as the pool worker does.
    static func receive(_ handOff: BatchHandOff) async -> BatchPart {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: handOff.receive()) }
        }
    }

    static func total(_ part: BatchPart) -> Int? {
        if case .end(_, let totalLines) = part { return totalLines }
        return nil
    }

    @Test("parts arrive in the order they were sent")
    func order() async {
        let handOff = BatchHandOff(capacity: 4)
        for total in 1...3 { #expect(await handOff.send(.end(rejects: [], totalLines: total))) }
        #expect(Self.total(await Self.receive(handOff)) == 1)
        #expect(Self.total(await Self.receive(handOff)) == 2)
        #expect(Self.total(await Self.receive(handOff)) == 3)
    }

    @Test("a sender waits while the hand-off is full, and goes on once a part is taken")
    func senderWaitsWhileFull() async throws {
        let handOff = BatchHandOff(capacity: 1)
        #expect(await handOff.send(.end(rejects: [], totalLines: 1)))
        let sent = Atomic(false)
        let second = Task {
            let accepted = await handOff.send(.end(rejects: [], totalLines: 2))
            sent.store(true, ordering: .sequentiallyConsistent)
            return accepted
        }
        try await Task.sleep(for: .milliseconds(200))
        let sentEarly = sent.load(ordering: .sequentiallyConsistent)
        #expect(!sentEarly, "the second part went in while one was waiting")
        #expect(Self.total(await Self.receive(handOff)) == 1)
        #expect(await second.value)
        #expect(Self.total(await Self.receive(handOff)) == 2)
    }

    @Test("once the receiver stops reading, a waiting sender and every later one are told so")
    func stopReadingReleasesSenders() async throws {
        let handOff = BatchHandOff(capacity: 1)
        #expect(await handOff.send(.end(rejects: [], totalLines: 1)))
        let waiting = Task { await handOff.send(.end(rejects: [], totalLines: 2)) }
        try await Task.sleep(for: .milliseconds(100))
        handOff.stopReading()
        #expect(await waiting.value == false)
        #expect(await handOff.send(.end(rejects: [], totalLines: 3)) == false)
    }
}
