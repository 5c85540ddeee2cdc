import Synchronization
import TallyCore

/// How many exports may stream at once, in all and per caller. An export holds a connection of
/// the shared pool for as long as its client reads (at the client's pace: each chunk may wait up
/// to `ChunkPipe`'s stall limit), so without a cap a few slow readers — any signed-in user may
/// export their own usage — held every connection, and authorize, ingest and the fold queued
/// behind them. An export waits up to `wait` for a slot (a burst of small ones, each done in
/// milliseconds, passes), then answers 429 `too_many_exports`. A freed slot goes at once to the
/// longest waiter whose caller may take it.
final class ExportSlots: Sendable {
    private struct Waiter {
        let id: UInt64
        let caller: Int64
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var running = 0
        var byCaller: [Int64: Int] = [:]
        /// Oldest first. Whoever removes a waiter resumes it, exactly once.
        var waiters: [Waiter] = []
        var lastWaiterID: UInt64 = 0

        func fits(_ caller: Int64, capacity: Int, perCaller: Int) -> Bool {
            running < capacity && byCaller[caller, default: 0] < perCaller
        }

        mutating func take(_ caller: Int64) {
            running += 1
            byCaller[caller, default: 0] += 1
        }

        mutating func remove(_ id: UInt64) -> Waiter? {
            guard let index = waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return waiters.remove(at: index)
        }
    }

    let capacity: Int
    let perCaller: Int
    let wait: Duration
    private let state = Mutex(State())

    /// Half of what the ingest streams leave of the pool (at least 1) in all, `perCaller` for each
    /// caller. Both hold a connection at their clients' pace; each capped at half the pool, slow
    /// uploads and slow export readers together held all of it (found by a review), and the
    /// journal, refills, lookups and the registration's renewal waited: authorize stopped.
    init(poolSize: Int, streams: Int, perCaller: Int = 2, wait: Duration = .seconds(10)) {
        capacity = max(1, (poolSize - streams) / 2)
        self.perCaller = perCaller
        self.wait = wait
    }

    static let busy = APIError(
        status: 429, code: "too_many_exports",
        message: "Too many exports are running; try again when one has finished.")

    /// Takes a slot for `caller`, waiting up to `wait` for one; throws ``busy`` when none came,
    /// `CancellationError` when cancelled first. ``release(caller:)`` gives it back.
    func acquire(caller: Int64) async throws {
        let id = state.withLock { state in
            state.lastWaiterID += 1
            return state.lastWaiterID
        }
        var deadline: Task<Void, Never>?
        defer { deadline?.cancel() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let answer: Result<Void, any Error>? = state.withLock { state in
                    // Checked under the lock that onCancel takes: a cancellation after it finds
                    // the waiter queued.
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if state.fits(caller, capacity: capacity, perCaller: perCaller) {
                        state.take(caller)
                        return .success(())
                    }
                    state.waiters.append(Waiter(id: id, caller: caller, continuation: continuation))
                    return nil
                }
                if let answer { return continuation.resume(with: answer) }
                deadline = Task { [wait] in
                    guard (try? await Task.sleep(for: wait)) != nil else { return }
                    self.drop(id, with: Self.busy)
                }
            }
        } onCancel: {
            drop(id, with: CancellationError())
        }
    }

    func release(caller: Int64) {
        let granted = state.withLock { state in
            state.running -= 1
            let left = state.byCaller[caller, default: 1] - 1
            state.byCaller[caller] = left > 0 ? left : nil
            guard
                let index = state.waiters.firstIndex(where: {
                    state.fits($0.caller, capacity: capacity, perCaller: perCaller)
                })
            else { return nil as Waiter? }
            let waiter = state.waiters.remove(at: index)
            state.take(waiter.caller)
            return waiter
        }
        granted?.continuation.resume()
    }

    /// How many exports wait for a slot (for tests).
    var waiting: Int { state.withLock { $0.waiters.count } }

    /// Ends the wait of `id` with `error`, unless it ended already.
    private func drop(_ id: UInt64, with error: any Error) {
        state.withLock { $0.remove(id) }?.continuation.resume(throwing: error)
    }
}
