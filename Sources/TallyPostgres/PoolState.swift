/// The bookkeeping of `PostgresPool` without I/O or locks, so that its rules are testable with
/// plain values: which slots are idle, how many exist, and who waits, first come first served.
/// Each call says what the caller must do next; the pool runs it under its lock and resumes
/// waiters after releasing the lock.
struct PoolState<Slot, Waiter> {
    /// A slot for a caller.
    enum Grant {
        /// This idle slot.
        case use(Slot)
        /// A new slot with this number (from 1), to be opened; it counts against the capacity.
        case create(index: Int)
    }

    /// What a caller asking for a slot does next.
    enum Acquisition {
        case granted(Grant)
        /// Wait for a slot, as waiter `id` (given to `wait`, and to `cancel` on cancellation).
        case wait(id: UInt64)
    }

    /// What a waiter does once it is in line, or instead of getting in line.
    enum Wait {
        /// A slot came free, or room for a new one, between `acquire` and `wait`: no waiting.
        case granted(Grant)
        /// In line; `release` hands it a slot.
        case queued
        /// Its task was cancelled before it got in line: it gives up and takes nothing.
        case cancelled
    }

    let capacity: Int
    private(set) var idle: [Slot] = []
    private(set) var created = 0
    private var waiters: [(id: UInt64, waiter: Waiter)] = []
    private var lastWaiterID: UInt64 = 0

    init(capacity: Int) {
        precondition(capacity > 0, "pool size must be positive")
        self.capacity = capacity
    }

    /// Waiters in line, first to be served first.
    var queuedWaiters: [Waiter] { waiters.map(\.waiter) }

    /// An idle slot, else a new one while under capacity, else a place in line.
    mutating func acquire() -> Acquisition {
        if let grant = takeSlot() { return .granted(grant) }
        lastWaiterID &+= 1
        return .wait(id: lastWaiterID)
    }

    /// Puts waiter `id` in line, unless a slot is free by now or its task is already cancelled.
    mutating func wait(_ waiter: Waiter, id: UInt64, cancelled: Bool) -> Wait {
        guard !cancelled else { return .cancelled }
        if let grant = takeSlot() { return .granted(grant) }
        waiters.append((id, waiter))
        return .queued
    }

    /// A slot is back: the first waiter gets it (the caller resumes that waiter with it), else it
    /// goes idle.
    mutating func release(_ slot: Slot) -> Waiter? {
        guard !waiters.isEmpty else {
            idle.append(slot)
            return nil
        }
        return waiters.removeFirst().waiter
    }

    /// Waiter `id`'s task was cancelled: it leaves the line, and the caller resumes it with the
    /// cancellation. Nil when it is not in line (served already, or not in line yet).
    mutating func cancel(id: UInt64) -> Waiter? {
        guard let index = waiters.firstIndex(where: { $0.id == id }) else { return nil }
        return waiters.remove(at: index).waiter
    }

    /// Takes every idle slot to be closed; they no longer count against the capacity.
    mutating func takeIdle() -> [Slot] {
        let taken = idle
        idle.removeAll()
        created -= taken.count
        return taken
    }

    private mutating func takeSlot() -> Grant? {
        if let slot = idle.popLast() { return .use(slot) }
        guard created < capacity else { return nil }
        created += 1
        return .create(index: created)
    }
}
