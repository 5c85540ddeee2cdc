import Testing

@testable import TallyPostgres

/// The pool's bookkeeping with plain values for slots and waiters, no database.
@Suite("pool bookkeeping")
struct PoolStateTests {
    typealias State = PoolState<String, String>

    /// The slot of a grant, "new-N" for a new one.
    static func slot(_ grant: State.Grant) -> String {
        switch grant {
        case .use(let slot): slot
        case .create(let index): "new-\(index)"
        }
    }

    static func granted(_ acquisition: State.Acquisition) -> String? {
        if case .granted(let grant) = acquisition { return slot(grant) }
        return nil
    }

    static func waiterID(_ acquisition: State.Acquisition) throws -> UInt64 {
        guard case .wait(let id) = acquisition else { throw WrongAnswer(answer: "\(acquisition)") }
        return id
    }

    struct WrongAnswer: Error { let answer: String }

    @Test("new slots up to the capacity, then waiting; a released slot is reused before a new one")
    func capacity() throws {
        var state = State(capacity: 2)
        #expect(Self.granted(state.acquire()) == "new-1")
        #expect(Self.granted(state.acquire()) == "new-2")
        let first = try Self.waiterID(state.acquire())
        let second = try Self.waiterID(state.acquire())
        #expect(first != second)
        #expect(state.created == 2)
        #expect(state.release("new-1") == nil)
        #expect(Self.granted(state.acquire()) == "new-1")
        #expect(state.created == 2)
    }

    @Test("waiters are served in order, then slots go idle")
    func fifo() throws {
        var state = State(capacity: 1)
        _ = state.acquire()
        for name in ["a", "b", "c"] {
            let id = try Self.waiterID(state.acquire())
            guard case .queued = state.wait(name, id: id, cancelled: false) else { throw WrongAnswer(answer: name) }
        }
        #expect(state.queuedWaiters == ["a", "b", "c"])
        #expect(state.release("new-1") == "a")
        #expect(state.release("new-1") == "b")
        #expect(state.release("new-1") == "c")
        #expect(state.release("new-1") == nil)
        #expect(state.idle == ["new-1"])
    }

    @Test("a cancelled waiter leaves the line, and the slot goes to the next one")
    func cancelQueued() throws {
        var state = State(capacity: 1)
        _ = state.acquire()
        let a = try Self.waiterID(state.acquire()), b = try Self.waiterID(state.acquire())
        _ = state.wait("a", id: a, cancelled: false)
        _ = state.wait("b", id: b, cancelled: false)
        #expect(state.cancel(id: a) == "a")
        #expect(state.cancel(id: a) == nil, "cancelled twice")
        #expect(state.queuedWaiters == ["b"])
        #expect(state.release("new-1") == "b")
        #expect(state.cancel(id: b) == nil, "already served: it keeps its slot")
        #expect(state.release("new-1") == nil)
        #expect(state.idle == ["new-1"])
    }

    @Test("cancelled before it got in line: it does not queue and takes nothing")
    func cancelBeforeQueueing() throws {
        var state = State(capacity: 1)
        _ = state.acquire()
        let id = try Self.waiterID(state.acquire())
        #expect(state.cancel(id: id) == nil)
        guard case .cancelled = state.wait("a", id: id, cancelled: true) else { throw WrongAnswer(answer: "queued") }
        #expect(state.queuedWaiters.isEmpty)
        #expect(state.release("new-1") == nil)
        #expect(state.idle == ["new-1"])
    }

    @Test("a slot freed between acquire and wait is taken at once")
    func freedBeforeQueueing() throws {
        var state = State(capacity: 1)
        _ = state.acquire()
        let id = try Self.waiterID(state.acquire())
        #expect(state.release("new-1") == nil)
        guard case .granted(let grant) = state.wait("a", id: id, cancelled: false) else {
            throw WrongAnswer(answer: "not granted")
        }
        #expect(Self.slot(grant) == "new-1")
        #expect(state.queuedWaiters.isEmpty)
    }

    @Test("closing takes the idle slots and frees their room for new ones")
    func takeIdle() {
        var state = State(capacity: 2)
        _ = state.acquire()
        _ = state.acquire()
        _ = state.release("new-2")
        #expect(state.takeIdle() == ["new-2"])
        #expect(state.created == 1)
        #expect(Self.granted(state.acquire()) == "new-2")
    }
}
