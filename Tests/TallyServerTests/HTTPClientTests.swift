import Foundation
import TallyHTTP
import TallyTestSupport
import Testing

/// The libcurl client against a local server.
@Suite("HTTP client (libcurl)")
struct HTTPClientTests {
    let client = HTTPClient()

    @Test("GET and POST: status, body and headers travel both ways; a non-2xx is a response, not an error")
    func roundTrips() async throws {
        try await WebhookReceiver().run { port in
            let sheet = try await client.send(.init(url: "http://127.0.0.1:\(port)/sheet.yaml"))
            #expect(sheet.status == 200)
            #expect(sheet.isSuccess)
            #expect(sheet.text == designPriceSheet)
            let echo = try await client.send(
                .init(
                    method: .post, url: "http://127.0.0.1:\(port)/echo",
                    headers: [("X-Test", "hello")], body: Array("a body".utf8)))
            #expect(echo.status == 201)
            #expect(echo.text == "hello|a body")
            let missing = try await client.send(.init(url: "http://127.0.0.1:\(port)/missing"))
            #expect(missing.status == 404)
            #expect(!missing.isSuccess)
            #expect(missing.text == "nope")
        }
    }

    @Test("a slow answer times out after the total timeout, with a clear error")
    func timeout() async throws {
        try await WebhookReceiver().run { port in
            let start = ContinuousClock.now
            // /slow answers only after this body returns: the send can only end by its timeout.
            let error = await #expect(throws: HTTPClientError.self) {
                try await client.send(.init(url: "http://127.0.0.1:\(port)/slow", timeout: .milliseconds(300)))
            }
            #expect(ContinuousClock.now - start >= .milliseconds(300))
            #expect(error?.kind == .timedOut)
            #expect(error?.message.hasPrefix("GET http://127.0.0.1:\(port): ") == true)
            #expect(error?.message.contains("timed out") == true)
        }
    }

    @Test("a refused connection is a connectionFailed error that shows the origin only, never the path or query")
    func refused() async throws {
        let error = await #expect(throws: HTTPClientError.self) {
            try await client.send(
                .init(method: .post, url: "http://127.0.0.1:1/hook/SECRETPATH?token=SECRETQUERY", body: [1]))
        }
        #expect(error?.kind == .connectionFailed)
        #expect(error?.message.hasPrefix("POST http://127.0.0.1:1: ") == true)
        #expect(error?.message.contains("SECRET") == false)
    }

    @Test("responses above the size cap fail, with or without a Content-Length")
    func sizeCap() async throws {
        try await WebhookReceiver().run { port in
            for path in ["big", "big-chunked"] {
                let error = await #expect(throws: HTTPClientError.self, "\(path)") {
                    try await client.send(.init(url: "http://127.0.0.1:\(port)/\(path)", maxResponseBytes: 1 << 20))
                }
                #expect(error?.kind == .responseTooLarge, "\(path)")
            }
            let fits = try await client.send(
                .init(url: "http://127.0.0.1:\(port)/big-chunked", maxResponseBytes: 4 << 20))
            #expect(fits.body.count == 3 << 20)
        }
    }

    /// Found by a review: a webhook receiver answering 200 with a page past 64 KiB was counted a
    /// failure, so the event went to it again, 20 times, and was dead-lettered.
    @Test("with cutsLongBody a long body is cut and its status answered; with no status it is still an error")
    func cutLongBody() async throws {
        try await WebhookReceiver().run { port in
            for path in ["big", "big-chunked"] {
                var request = HTTPClient.Request(url: "http://127.0.0.1:\(port)/\(path)", maxResponseBytes: 64 << 10)
                request.cutsLongBody = true
                let response = try await client.send(request)
                #expect(response.status == 200, "\(path)")
                #expect(response.body.count <= 64 << 10, "\(path)")
            }
            var slow = HTTPClient.Request(url: "http://127.0.0.1:\(port)/slow", timeout: .milliseconds(300))
            slow.cutsLongBody = true
            let error = await #expect(throws: HTTPClientError.self) { try await client.send(slow) }
            #expect(error?.kind == .timedOut)
        }
    }

    /// Found by a review: a receiver that answered 200 and closed before its Content-Length was
    /// counted a failure, and the event sent again until dead-lettered.
    @Test("with cutsLongBody a 2xx whose body breaks off is answered; a 5xx that does is still an error")
    func cutShortBody() async throws {
        for (status, answered) in [(200, true), (503, false)] {
            let port = try Self.answerOnce("HTTP/1.1 \(status) X\r\nContent-Length: 100\r\n\r\nok")
            var request = HTTPClient.Request(method: .post, url: "http://127.0.0.1:\(port)/hook", body: [1])
            request.cutsLongBody = true
            if answered {
                #expect(try await client.send(request).status == status)
            } else {
                await #expect(throws: HTTPClientError.self) { try await client.send(request) }
            }
        }
    }

    /// A one-shot server on a free port of 127.0.0.1 that answers its first connection with
    /// `reply` as it is, then closes it (what Hummingbird would never send).
    static func answerOnce(_ reply: String) throws -> Int {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        try withUnsafeMutablePointer(to: &address) { pointer in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                guard bind(listener, $0, length) == 0, listen(listener, 1) == 0, getsockname(listener, $0, &length) == 0
                else { throw POSIXError(.EADDRINUSE) }
            }
        }
        let port = Int(UInt16(bigEndian: address.sin_port))
        Thread.detachNewThread {
            let connection = accept(listener, nil, nil)
            var buffer = [UInt8](repeating: 0, count: 4096)
            _ = read(connection, &buffer, buffer.count)
            _ = reply.utf8CString.withUnsafeBufferPointer { write(connection, $0.baseAddress, $0.count - 1) }
            close(connection)
            close(listener)
        }
        return port
    }

    @Test("other schemes, malformed URLs and header injection are refused before sending")
    func invalidRequests() async throws {
        for url in ["ftp://127.0.0.1/x", "file:///etc/passwd", "not a url"] {
            let error = await #expect(throws: HTTPClientError.self, "\(url)") { try await client.send(.init(url: url)) }
            #expect(error?.kind == .invalidRequest, "\(url)")
        }
        let injected = await #expect(throws: HTTPClientError.self) {
            try await client.send(.init(url: "http://127.0.0.1:1/", headers: [("X-Evil", "a\r\nHost: other")]))
        }
        #expect(injected?.kind == .invalidRequest)
    }

    @Test("cancelling the task aborts the transfer")
    func cancellation() async throws {
        let receiver = WebhookReceiver()
        try await receiver.run { port in
            let task = Task {
                try await client.send(.init(url: "http://127.0.0.1:\(port)/slow", timeout: .seconds(600)))
            }
            // Cancelled once the request is in flight; /slow answers only after this body returns
            // and the timeout is far away, so only the cancellation can end the transfer.
            let inFlight = try await waitUntil { receiver.slowRequestsArrived == 1 }
            #expect(inFlight)
            task.cancel()
            await #expect(throws: CancellationError.self) { try await task.value }
        }
    }
}
