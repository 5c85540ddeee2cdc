import Foundation
import Hummingbird

/// Carries byte chunks from a blocking producer (a pool thread running `COPY … TO STDOUT`) to an
/// async consumer (the HTTP response writer), holding at most `capacity` chunks: when the client
/// reads slowly the producer blocks, and with it the COPY, so memory stays constant.
final class ChunkPipe: @unchecked Sendable {
    /// The consumer went away (client disconnected, or read nothing for `stallLimit`).
    struct Closed: Error {}

    // Every stored var below is guarded by `condition`'s lock; the producer waits on it.
    private let condition = NSCondition()
    private var chunks: [ByteBuffer] = []
    private var end: Result<Void, any Error>?
    private var waiter: CheckedContinuation<ByteBuffer?, any Error>?
    private var closed = false
    private let capacity: Int
    private let stallLimit: TimeInterval

    init(capacity: Int = 4, stallLimit: TimeInterval = 120) {
        self.capacity = capacity
        self.stallLimit = stallLimit
    }

    // MARK: Producer (blocking thread)

    /// Queues a copy of `bytes`, waiting while the pipe is full; throws `Closed` once the
    /// consumer is gone.
    func send(_ bytes: UnsafeRawBufferPointer) throws {
        let chunk = ByteBuffer(bytes: bytes)
        condition.lock()
        let deadline = Date(timeIntervalSinceNow: stallLimit)
        while chunks.count >= capacity, !closed {
            if !condition.wait(until: deadline) { closed = true }
        }
        guard !closed else {
            condition.unlock()
            throw Closed()
        }
        guard let waiter else {
            chunks.append(chunk)
            condition.unlock()
            return
        }
        self.waiter = nil
        condition.unlock()
        waiter.resume(returning: chunk)
    }

    /// Ends the stream: after the queued chunks, `next()` returns nil or throws the error.
    func finish(_ result: Result<Void, any Error>) {
        condition.lock()
        end = result
        let waiting = chunks.isEmpty ? waiter : nil
        if waiting != nil { waiter = nil }
        condition.unlock()
        waiting?.resume(with: result.map { nil })
    }

    // MARK: Consumer (async)

    /// The next chunk; nil at the end; throws the producer's error.
    func next() async throws -> ByteBuffer? {
        try await withCheckedThrowingContinuation { continuation in
            condition.lock()
            if !chunks.isEmpty {
                let chunk = chunks.removeFirst()
                condition.signal()
                condition.unlock()
                continuation.resume(returning: chunk)
            } else if let end {
                condition.unlock()
                continuation.resume(with: end.map { nil })
            } else {
                waiter = continuation
                condition.unlock()
            }
        }
    }

    /// The consumer stops reading: a blocked or later `send` throws `Closed`.
    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }
}

/// The consumer's end of a ``ChunkPipe``; dropping it closes the pipe. A response whose body
/// never runs (its client left before the head went out: the writer then throws before calling
/// the body) would otherwise leave the producer blocked, and with it the COPY and its pooled
/// connection, until the pipe's `stallLimit`.
final class ChunkPipeReader: Sendable {
    private let pipe: ChunkPipe

    init(_ pipe: ChunkPipe) { self.pipe = pipe }

    deinit { pipe.close() }

    /// The next chunk; nil at the end; throws the producer's error.
    func next() async throws -> ByteBuffer? { try await pipe.next() }

    /// Stops reading: a blocked or later `send` throws `ChunkPipe.Closed`.
    func close() { pipe.close() }
}
