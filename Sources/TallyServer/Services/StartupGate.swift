import ServiceLifecycle
import Synchronization

/// Opens once a piece of start-up work is done: the HTTP server's, in `beforeServerStarts`
/// (migrations, the price reload, the lease registration), which the background services run
/// beside from the start, so each waits here (``AfterStartup``) before its first round; and the
/// change listener's first `LISTEN`, which `beforeServerStarts` waits for.
final class StartupGate: Sendable {
    private struct State {
        var isOpen = false
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 0
    }

    private let state = Mutex(State())

    var isOpen: Bool { state.withLock { $0.isOpen } }

    func open() {
        let waiters = state.withLock { state in
            state.isOpen = true
            defer { state.waiters = [:] }
            return state.waiters.values
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the gate is open, or at once when the task is cancelled (start-up failed and
    /// the service group is cancelled): then ``isOpen`` tells which.
    func wait() async {
        let id = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state in
                    guard !state.isOpen, !Task.isCancelled else { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}

/// Runs `service` once the start-up work is done; not at all when start-up fails or shutdown
/// begins first (then nothing was started that it would tend).
struct AfterStartup: Service {
    let gate: StartupGate
    let service: any Service

    func run() async throws {
        await cancelWhenGracefulShutdown { await gate.wait() }
        guard gate.isOpen else { return }
        try await service.run()
    }
}
