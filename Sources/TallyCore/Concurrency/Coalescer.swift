import Synchronization

/// Runs many small requests as few database calls: up to `limit` calls are in flight at once,
/// and whatever is submitted meanwhile goes out together in the next one. So under load each
/// call carries many requests (one commit for all of them), and with several calls in flight
/// none waits for a single one ahead of it (pipelined group commits on separate connections).
public final class Coalescer<Item: Sendable, Answer: Sendable>: Sendable {
    /// Answers one call's items, one answer per item in their order.
    public typealias Call = @Sendable ([Item]) async throws -> [Answer]

    private struct Waiting {
        let item: Item
        let continuation: CheckedContinuation<Answer, any Error>
    }

    private struct State {
        var queue: [Waiting] = []
        var inFlight = 0
    }

    private let limit: Int
    private let call: Call
    private let state = Mutex(State())

    public init(limit: Int, call: @escaping Call) {
        self.limit = max(1, limit)
        self.call = call
    }

    public func submit(_ item: Item) async throws -> Answer {
        try await withCheckedThrowingContinuation { continuation in
            let starts = state.withLock { state in
                state.queue.append(Waiting(item: item, continuation: continuation))
                guard state.inFlight < limit else { return false }
                state.inFlight += 1
                return true
            }
            if starts { Task { await drain() } }
        }
    }

    /// One of the `limit` callers: takes everything queued, calls, answers, until nothing is left.
    private func drain() async {
        while true {
            let batch = state.withLock { state -> [Waiting] in
                defer { state.queue = [] }
                if state.queue.isEmpty { state.inFlight -= 1 }
                return state.queue
            }
            guard !batch.isEmpty else { return }
            do {
                let answers = try await call(batch.map(\.item))
                guard answers.count == batch.count else { throw CoalescerError.answerCountMismatch }
                for (waiting, answer) in zip(batch, answers) { waiting.continuation.resume(returning: answer) }
            } catch {
                for waiting in batch { waiting.continuation.resume(throwing: error) }
            }
        }
    }
}

public enum CoalescerError: Error {
    /// A call answered more or fewer items than it was given (a bug, never a database state).
    case answerCountMismatch
}
