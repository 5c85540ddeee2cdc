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
