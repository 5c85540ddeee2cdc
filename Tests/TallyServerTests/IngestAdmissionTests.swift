import Foundation
import Synchronization
import TallyCore
import TallyStore
import TallyTestSupport
import Testing

@testable import TallyServer

/// Found by a review of the batch path: every batch past the streams was read whole at once,
/// however many came, each keeping its priced lines (up to ~50 MB for 50,000 lines) while it
/// queued for a connection.
@Suite("ingest admission: batches past the streams and the whole reads wait unread")
struct IngestAdmissionTests {
    /// A body that arrives only when let go.
    final class HeldBody: Sendable {
        private let state = Mutex((released: false, waiter: nil as CheckedContinuation<Void, Never>?, read: false))

        var read: Bool { state.withLock { $0.read } }

        func arrive() async {
            await withCheckedContinuation { continuation in
                let now = state.withLock { state in
                    state.read = true
                    guard state.released else {
                        state.waiter = continuation
                        return false
                    }
                    return true
                }
                if now { continuation.resume() }
            }
        }

        func release() {
            let waiter = state.withLock { state in
                state.released = true
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }

    /// An ingestor that streams no batch and reads one whole at a time, each waiting `wait`.
    static func ingestor(_ name: String, wait: Duration) async throws -> Ingestor {
        let db = try await TestDatabase.create(name)
        try await db.prepareBilling(users: 1)
        var limits = IngestLimits()
        limits.maxStreamedBatches = 0
        limits.maxWholeBatches = 1
        limits.admissionWait = wait
        let services = TallyServices(pool: db.pool, ingestLimits: limits)
        try await services.prices.reload()
        return services.ingestor
    }

    /// A one-line batch whose body arrives when `body` is let go.
    static func batch(_ id: String, _ body: HeldBody, _ ingestor: Ingestor) -> Task<IngestResult, any Error> {
        Task {
            try await ingestor.ingest(format: .gateway, tid: "t-\(id)", source: "test") { reader in
                await body.arrive()
                let line = Array((LogLines.chat(id, user: 1) + "\n").utf8)
                try line.withUnsafeBytes { try reader.feed($0) }
                try await reader.advance()
            }
        }
    }

    @Test("with one whole read allowed, a second batch waits unread until the first is stored; a cancelled one leaves")
    func secondWaits() async throws {
        let ingestor = try await Self.ingestor("ingest-admission", wait: .seconds(10))
        func batch(_ id: String, _ body: HeldBody) -> Task<IngestResult, any Error> { Self.batch(id, body, ingestor) }
        let first = HeldBody(), second = HeldBody(), third = HeldBody()
        let firstBatch = batch("first", first)
        #expect(try await waitUntil(timeout: .seconds(5)) { first.read })
        let secondBatch = batch("second", second)
        let thirdBatch = batch("third", third)
        #expect(try await waitUntil(timeout: .seconds(5)) { ingestor.batchesWaiting == 2 })
        second.release()
        third.release()
        try await Task.sleep(for: .milliseconds(100))
        #expect(!second.read && !third.read)
        thirdBatch.cancel()
        await #expect(throws: CancellationError.self) { try await thirdBatch.value }
        #expect(ingestor.batchesWaiting == 1)
        first.release()
        #expect(try await firstBatch.value.accepted == 1)
        #expect(try await secondBatch.value.accepted == 1)
        #expect(!third.read)
        #expect(ingestor.batchesWaiting == 0)
    }

    /// Found by a review of the admission: a batch waiting unread past the HTTP idle timeout has
    /// its connection closed, and a client that hung up is never cancelled by the HTTP server, so
    /// a wait must end on its own.
    @Test("a batch that waits longer than its patience is refused unread (BatchGate.Busy), and leaves the queue")
    func waitEnds() async throws {
        let ingestor = try await Self.ingestor("ingest-admission-wait", wait: .milliseconds(300))
        let first = HeldBody(), second = HeldBody()
        func batch(_ id: String, _ body: HeldBody) -> Task<IngestResult, any Error> { Self.batch(id, body, ingestor) }
        let firstBatch = batch("first", first)
        #expect(try await waitUntil(timeout: .seconds(5)) { first.read })
        second.release()
        await #expect(throws: BatchGate.Busy.self) { try await batch("second", second).value }
        #expect(!second.read && ingestor.batchesWaiting == 0)
        first.release()
        #expect(try await firstBatch.value.accepted == 1)
    }
}
