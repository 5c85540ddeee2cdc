import Dispatch
import Synchronization

/// What the request side hands a streamed batch's transaction, in order: priced lines as they
/// are read, then the end of the body (or why it could not be read).
public enum BatchPart: Sendable {
    case lines([PricedLine])
    case end(rejects: [RejectedLine], totalLines: Int)
    case failed(any Error)
}

/// A bounded hand-off from the request that reads a batch (async) to the pool thread that
/// writes it inside the batch's transaction (blocking libpq calls). The sender is suspended,
/// never blocked, while `capacity` parts wait; the receiver blocks its own thread only.
///
/// The receiver either takes every part up to `.end`/`.failed`, or calls ``stopReading()``
/// once it gives up (a lost connection), so that no sender waits forever.
public final class BatchHandOff: Sendable {
    private struct State {
        var parts: [BatchPart] = []
        var waitingSenders: [CheckedContinuation<Void, Never>] = []
        var stopped = false
    }

    private let capacity: Int
    private let state = Mutex(State())
    /// Counts the parts waiting for the receiver.
    private let available = DispatchSemaphore(value: 0)

    public init(capacity: Int = 4) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// Hands `part` on, waiting while the hand-off is full. Returns false when the receiver
    /// stopped reading (the part is dropped).
    @discardableResult
    public func send(_ part: BatchPart) async -> Bool {
        while true {
            enum Step { case sent, dropped, full }
            let step = state.withLock { state -> Step in
                if state.stopped { return .dropped }
                guard state.parts.count < capacity else { return .full }
                state.parts.append(part)
                return .sent
            }
            switch step {
            case .sent:
                available.signal()
                return true
            case .dropped:
                return false
            case .full:
                await withCheckedContinuation { continuation in
                    let waitNow = state.withLock { state -> Bool in
                        guard !state.stopped, state.parts.count >= capacity else { return false }
                        state.waitingSenders.append(continuation)
                        return true
                    }
                    if !waitNow { continuation.resume() }
                }
            }
        }
    }

    /// Takes the next part, blocking the calling thread until one is there.
    @available(*, noasync, message: "blocks its thread: call it on a pool worker")
    public func receive() -> BatchPart {
        available.wait()
        let (part, wake) = state.withLock { state -> (BatchPart, [CheckedContinuation<Void, Never>]) in
            let part = state.parts.removeFirst()
            defer { state.waitingSenders.removeAll() }
            return (part, state.waitingSenders)
        }
        for sender in wake { sender.resume() }
        return part
    }

    /// The receiver gives up: waiting and later senders are told so, their parts dropped.
    public func stopReading() {
        let wake = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.stopped = true
            state.parts.removeAll()
            defer { state.waitingSenders.removeAll() }
            return state.waitingSenders
        }
        for sender in wake { sender.resume() }
    }
}
