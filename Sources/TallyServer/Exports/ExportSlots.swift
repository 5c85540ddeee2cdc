import Synchronization
import TallyCore

/// How many exports may stream at once, in all and per caller. An export holds a connection of
/// the shared pool for as long as its client reads (at the client's pace: each chunk may wait up
/// to `ChunkPipe`'s stall limit), so without a cap a few slow readers — any signed-in user may
/// export their own usage — held every connection, and authorize, ingest and the fold queued
/// behind them. An export waits up to `wait` for a slot (a burst of small ones, each done in
/// milliseconds, passes), then answers 429 `too_many_exports`.
final class ExportSlots: Sendable {
    private struct State {
        var running = 0
        var byCaller: [Int64: Int] = [:]
    }

    let capacity: Int
    let perCaller: Int
    let wait: Duration
    private let state = Mutex(State())

    /// Half the pool (at least 1) in all, `perCaller` for each caller.
    init(poolSize: Int, perCaller: Int = 2, wait: Duration = .seconds(10)) {
        capacity = max(1, poolSize / 2)
        self.perCaller = perCaller
        self.wait = wait
    }

    static let busy = APIError(
        status: 429, code: "too_many_exports",
        message: "Too many exports are running; try again when one has finished.")

    /// Takes a slot for `caller`, waiting up to `wait` (or until cancelled) for one; throws
    /// ``busy`` when none came. ``release(caller:)`` gives it back.
    func acquire(caller: Int64) async throws {
        let deadline = ContinuousClock.now + wait
        while !take(caller) {
            guard ContinuousClock.now < deadline else { throw Self.busy }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func release(caller: Int64) {
        state.withLock { state in
            state.running -= 1
            let left = state.byCaller[caller, default: 1] - 1
            state.byCaller[caller] = left > 0 ? left : nil
        }
    }

    private func take(_ caller: Int64) -> Bool {
        state.withLock { state in
            guard state.running < capacity, state.byCaller[caller, default: 0] < perCaller else { return false }
            state.running += 1
            state.byCaller[caller, default: 0] += 1
            return true
        }
    }
}
