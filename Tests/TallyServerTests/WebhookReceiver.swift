import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Synchronization
import TallyTestSupport
import Testing

/// A local HTTP server in the test process: records webhook POSTs (failing the first N on
/// request) and serves the fixtures the HTTP client and `tally prices load URL` are tested with.
final class WebhookReceiver: Sendable {
    struct Received: Sendable {
        /// Header fields by lowercased name.
        let headers: [String: String]
        let body: [UInt8]

        var eventID: String? { headers["x-tally-event-id"] }
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:] }

        /// Checks `X-Tally-Signature` the way docs/webhooks.md tells receivers to.
        func signatureVerifies(secret: String) -> Bool {
            guard let timestamp = headers["x-tally-timestamp"], let signature = headers["x-tally-signature"] else {
                return false
            }
            let expected = HMAC<SHA256>.authenticationCode(
                for: Data((timestamp + ".").utf8) + Data(body),
                using: SymmetricKey(data: Data(secret.utf8)))
            return signature == "sha256=" + expected.map { String(format: "%02x", $0) }.joined()
        }
    }

    private let state = Mutex<(received: [Received], failuresLeft: Int)>(([], 0))
    /// `GET /slow` requests that arrived; they are answered only when `run`'s body has returned.
    private let slow = Mutex<(arrived: Int, released: Bool)>((0, false))

    /// The next `count` webhook POSTs are answered 503.
    func failNext(_ count: Int) { state.withLock { $0.failuresLeft = count } }

    var received: [Received] { state.withLock { $0.received } }

    var slowRequestsArrived: Int { slow.withLock { $0.arrived } }

    /// Runs `body` with the receiver listening on an ephemeral port of 127.0.0.1.
    func run(_ body: @Sendable (_ port: Int) async throws -> Void) async throws {
        let app = Application(router: router(), configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            defer { self.slow.withLock { $0.released = true } }
            try await body(try #require(client.port))
        }
    }

    /// Waits until `count` webhook POSTs have arrived (or `timeout` passes); returns them.
    func waitFor(_ count: Int, timeout: Duration = .seconds(60)) async throws -> [Received] {
        let deadline = ContinuousClock.now + timeout
        while received.count < count && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        return received
    }

    /// Keeps a webhook POST; true when it is to be answered as failed.
    private func record(_ request: Request) async throws -> Bool {
        let body = try await request.body.collect(upTo: 1 << 20)
        var headers: [String: String] = [:]
        for field in request.headers { headers[field.name.canonicalName] = field.value }
        return state.withLock { state -> Bool in
            state.received.append(Received(headers: headers, body: Array(buffer: body)))
            guard state.failuresLeft > 0 else { return false }
            state.failuresLeft -= 1
            return true
        }
    }

    private func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/hook") { request, _ -> Response in
            Response(status: try await self.record(request) ? .serviceUnavailable : .noContent)
        }
        // A receiver that answers 200 with a page far longer than a webhook's answer may be.
        router.post("/hook-long") { request, _ -> Response in
            let failed = try await self.record(request)
            return Response(
                status: failed ? .serviceUnavailable : .ok,
                body: ResponseBody(byteBuffer: ByteBuffer(repeating: UInt8(ascii: "z"), count: 256 << 10)))
        }
        // A receiver that takes each POST and answers only once the test is over.
        router.post("/hook-hang") { request, _ -> Response in
            _ = try await self.record(request)
            while !self.slow.withLock({ $0.released }) { try await Task.sleep(for: .milliseconds(10)) }
            return Response(status: .noContent)
        }
        router.post("/echo") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 1 << 20)
            let header = request.headers[HTTPField.Name("X-Test")!] ?? ""
            return Response(
                status: .created,
                body: ResponseBody(byteBuffer: ByteBuffer(string: header + "|" + String(buffer: body))))
        }
        router.get("/sheet.yaml") { _, _ in designPriceSheet }
        router.get("/missing") { _, _ -> Response in
            Response(status: .notFound, body: ResponseBody(byteBuffer: ByteBuffer(string: "nope")))
        }
        // Answers only once the test is over (or after a minute): a client that returns before
        // that was stopped by its timeout or cancellation, never by the answer.
        router.get("/slow") { _, _ -> String in
            self.slow.withLock { $0.arrived += 1 }
            let deadline = ContinuousClock.now + .seconds(60)
            while !self.slow.withLock({ $0.released }) && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            return "late"
        }
        router.get("/big") { _, _ in ByteBuffer(repeating: UInt8(ascii: "x"), count: 3 << 20) }
        router.get("/big-chunked") { _, _ -> Response in
            // Streamed without a Content-Length: only the write callback can enforce the cap.
            Response(
                status: .ok,
                body: ResponseBody { writer in
                    for _ in 0..<48 {
                        try await writer.write(ByteBuffer(repeating: UInt8(ascii: "y"), count: 64 << 10))
                    }
                    try await writer.finish(nil)
                })
        }
        return router
    }
}
