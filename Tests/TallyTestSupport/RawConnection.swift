import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A plain TCP connection for tests that must send what an HTTP client library would not:
/// partial heads, stalled bodies, invalid bytes in headers. Its blocking socket calls run on a
/// thread of their own, never on the concurrency pool that an in-process server needs.
public final class RawConnection: @unchecked Sendable {
    private let socket: Int32

    public init(port: Int) throws {
        socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { throw TestClusterError(message: "socket() failed: errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            close(socket)
            throw TestClusterError(message: "connect() to port \(port) failed: errno \(errno)")
        }
    }

    deinit { close(socket) }

    /// Writes all of `bytes`; false when the peer has closed the connection.
    @discardableResult
    public func send(_ bytes: [UInt8]) async -> Bool {
        await offThePool { self.sendBlocking(bytes) }
    }

    @discardableResult
    public func send(_ text: String) async -> Bool { await send(Array(text.utf8)) }

    /// Ends the connection in both directions at once, as a client that goes away does.
    public func hangUp() { shutdown(socket, Int32(SHUT_RDWR)) }

    /// Reads until the peer closes the connection or `timeout` passes; returns what arrived and
    /// whether the connection was closed (end of stream or reset) by then.
    public func readUntilClosed(timeout: TimeInterval) async -> (data: [UInt8], closed: Bool) {
        await offThePool { self.readBlocking(timeout: timeout) }
    }

    private func sendBlocking(_ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes {
                Glibc.send(socket, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            guard written > 0 else { return false }
            offset += written
        }
        return true
    }

    private func readBlocking(timeout: TimeInterval) -> (data: [UInt8], closed: Bool) {
        let deadline = Date().addingTimeInterval(timeout)
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { return (data, false) }
            var poller = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, Int32(max(1, remaining * 1000)))
            guard ready > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
            if count <= 0 { return (data, true) }
            data += buffer[..<count]
        }
    }

    /// The status code of the first response in `data`, if a status line arrived.
    public static func status(_ data: [UInt8]) -> Int? {
        let text = String(decoding: data.prefix(64), as: UTF8.self)
        guard text.hasPrefix("HTTP/1.1 ") else { return nil }
        return Int(text.dropFirst(9).prefix(3))
    }
}

/// Runs blocking work (sockets, child processes) on a new thread and awaits its result, so the
/// few threads of the concurrency pool stay free for the server under test.
public func offThePool<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: work()) }.start()
    }
}
