/// Simulated time, in milliseconds since the start of the run.
typealias SimTime = Int64

/// The events of a run in time order (ties in the order they were scheduled), so a run is a
/// function of its seed alone: every interleaving comes from the random latencies and faults
/// drawn when events are scheduled.
struct Scheduler<Event> {
    /// The heap orders small keys; the events themselves stay put in `slots`.
    private struct Key {
        let at: SimTime
        let sequence: UInt64
        let slot: Int

        func precedes(_ other: Key) -> Bool { at != other.at ? at < other.at : sequence < other.sequence }
    }

    private(set) var now: SimTime = 0
    private var heap: [Key] = []
    private var slots: [Event?] = []
    private var freeSlots: [Int] = []
    private var scheduled: UInt64 = 0

    var isEmpty: Bool { heap.isEmpty }

    mutating func schedule(_ event: Event, at time: SimTime) {
        scheduled += 1
        let slot: Int
        if let free = freeSlots.popLast() {
            slot = free
            slots[slot] = event
        } else {
            slot = slots.count
            slots.append(event)
        }
        heap.append(Key(at: max(time, now), sequence: scheduled, slot: slot))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].precedes(heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func schedule(_ event: Event, after delay: SimTime) { schedule(event, at: now + delay) }

    /// The earliest event; time moves on to it.
    mutating func next() -> Event? {
        guard let first = heap.first else { return nil }
        let last = heap.removeLast()
        if !heap.isEmpty {
            heap[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < heap.count, heap[left].precedes(heap[smallest]) { smallest = left }
                if right < heap.count, heap[right].precedes(heap[smallest]) { smallest = right }
                guard smallest != parent else { break }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
        }
        now = first.at
        let event = slots[first.slot].take()
        freeSlots.append(first.slot)
        return event
    }
}
