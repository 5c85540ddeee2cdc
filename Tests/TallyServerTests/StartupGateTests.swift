import Synchronization
import Testing

@testable import TallyServer

/// The background services wait for the start-up work (migrations, price reload, lease
/// registration) through ``StartupGate``; none may run before it, and none may hang when
/// start-up fails.
@Suite("Start-up gate")
struct StartupGateTests {
    @Test("waiters return only once the gate opens, and later waiters at once")
    func opens() async {
        let gate = StartupGate()
        let returned = Returned()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<3 {
                group.addTask {
                    await gate.wait()
                    returned.count.add(1, ordering: .relaxed)
                }
            }
            // Yield until every waiter is parked; none may have passed the closed gate.
            for _ in 0..<100 { await Task.yield() }
            #expect(returned.count.load(ordering: .relaxed) == 0)
            #expect(!gate.isOpen)
            gate.open()
        }
        #expect(returned.count.load(ordering: .relaxed) == 3)
        await gate.wait()
        #expect(gate.isOpen)
    }

    @Test("a cancelled waiter returns with the gate still closed (start-up failed)")
    func cancelled() async {
        let gate = StartupGate()
        let waiter = Task { await gate.wait() }
        waiter.cancel()
        await waiter.value
        #expect(!gate.isOpen)
        let cancelledFirst = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            await gate.wait()
        }
        await cancelledFirst.value
    }
}

private final class Returned: Sendable {
    let count = Atomic<Int>(0)
}
