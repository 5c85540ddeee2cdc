/// Which log batches may be read now, as a state machine (events in, decisions out; the
/// ingestor runs it under a lock): up to `streams` batches are stored while their body arrives
/// (each holds a pool connection for its upload), up to `whole` more are read whole first (no
/// connection held while a slow client uploads, but every priced line kept in memory), and any
/// more wait, their bodies unread, in arrival order: TCP then holds the clients back instead of
/// the server holding their lines (until 2026-12-07 every batch past the streams was read whole
/// at once, however many came).
public struct BatchAdmission: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case stream, whole
    }

    public let streams: Int
    public let whole: Int
    public private(set) var streaming = 0
    public private(set) var readingWhole = 0
    /// Batches waiting, by the id they arrived with, first come first.
    public private(set) var waiting: [Int] = []

    public init(streams: Int, whole: Int) {
        self.streams = max(0, streams)
        self.whole = max(1, whole)
    }

    /// Batch `id` arrives: how it may be read now, or nil when it waits (nothing waits ahead
    /// of it that could take the place).
    public mutating func arrive(_ id: Int) -> Kind? {
        if waiting.isEmpty, let kind = take() { return kind }
        waiting.append(id)
        return nil
    }

    /// A batch read as `kind` ended (stored or failed): the waiting batches that may be read
    /// now, in arrival order.
    public mutating func end(_ kind: Kind) -> [(id: Int, kind: Kind)] {
        switch kind {
        case .stream: streaming -= 1
        case .whole: readingWhole -= 1
        }
        var admitted: [(id: Int, kind: Kind)] = []
        while let first = waiting.first, let kind = take() {
            waiting.removeFirst()
            admitted.append((first, kind))
        }
        return admitted
    }

    /// Waiting batch `id` gave up (its request was cancelled); false when it was not waiting.
    public mutating func leave(_ id: Int) -> Bool {
        guard let index = waiting.firstIndex(of: id) else { return false }
        waiting.remove(at: index)
        return true
    }

    private mutating func take() -> Kind? {
        if streaming < streams {
            streaming += 1
            return .stream
        }
        if readingWhole < whole {
            readingWhole += 1
            return .whole
        }
        return nil
    }
}
