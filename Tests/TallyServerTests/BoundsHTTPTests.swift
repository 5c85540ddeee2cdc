import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyServer
import TallyStore
import TallyTestSupport
import Testing

/// What a slow, oversized or malformed request can cost the live server: bounded by the idle
/// timeout, the body limit of each route and the HTTP parser's limits (docs/security.md).
@Suite("request bounds over HTTP")
struct BoundsHTTPTests {
    static func database() async throws -> TestDatabase {
        let db = try await TestDatabase.shared("bounds")
        try await db.prepareBilling(users: 1)
        return db
    }

    @Test("a stalled head, a stalled body and an idle keep-alive connection are closed after the idle timeout")
    func slowClients() async throws {
        let db = try await Self.database()
        try await TestApp.build(db, { $0.idleTimeoutSeconds = 1 }).test(.live) { client in
            let port = try #require(client.port)
            let stalledHead = try RawConnection(port: port)
            await stalledHead.send("GET /healthz HTTP/1.1\r\nHost: tally\r\nX-Slow: ")
            let stalledBody = try RawConnection(port: port)
            await stalledBody.send(
                "POST /gateway/v1/logs HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer test-gateway-secret\r\n"
                    + "Content-Length: 100000\r\n\r\n" + LogLines.chat("stalled-1"))
            let idle = try RawConnection(port: port)
            await idle.send("GET /healthz HTTP/1.1\r\nHost: tally\r\n\r\n")
            let started = ContinuousClock.now
            for (name, connection) in [
                ("stalled head", stalledHead), ("stalled body", stalledBody), ("idle keep-alive", idle),
            ] {
                let (data, closed) = await connection.readUntilClosed(timeout: 20)
                #expect(closed, "\(name): still open after 20 s")
                if name == "idle keep-alive" { #expect(RawConnection.status(data) == 200) }
            }
            // Closed by the 1 s timeout, not by the peer giving up (with room for a loaded machine).
            #expect(ContinuousClock.now - started < .seconds(15))
        }
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id = 'stalled-1'") == 0)
    }

    @Test("a client gone mid-body after parts were streamed into the batch's COPY: rolled back, nothing stored")
    func clientGoneMidStream() async throws {
        let db = try await Self.database()
        let now = ISO8601DateFormatter().string(from: Date())
        let lines = (1...5_000).map { LogLines.chat("gone-\($0)", at: now) + "\n" }
        let body = lines.joined()
        try await TestApp.build(db).test(.live) { client in
            let connection = try RawConnection(port: try #require(client.port))
            await connection.send(
                "POST /gateway/v1/logs HTTP/1.1\r\nHost: tally\r\nAuthorization: Bearer test-gateway-secret\r\n"
                    + "Content-Length: \(body.utf8.count)\r\n\r\n" + lines[..<2_500].joined())
            // Two parts of 1,000 lines are in PostgreSQL's COPY before the client goes.
            let streamed = try await waitUntil(timeout: .seconds(30)) {
                try await db.scalar(
                    """
                    SELECT count(*) FROM pg_stat_progress_copy
                    WHERE datname = current_database() AND tuples_processed >= 2000
                    """) == 1
            }
            #expect(streamed, "the first parts never reached the COPY")
            connection.hangUp()
            let closed = try await waitUntil(timeout: .seconds(30)) {
                try await db.scalar(
                    """
                    SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND (state LIKE 'idle in transaction%' OR query LIKE 'COPY%')
                      AND pid <> pg_backend_pid() AND state <> 'idle'
                    """) == 0
            }
            #expect(closed, "the batch's transaction stayed open after the client left")
        }
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'gone-%'") == 0)
        #expect(try await db.scalar("SELECT count(*) FROM ingest_rejects WHERE request_id LIKE 'gone-%'") == 0)
    }

    @Test("bodies over a route's limit answer 413 payload_too_large in its envelope; routes without a body ignore one")
    func oversizedBodies() async throws {
        let db = try await Self.database()
        let (_, access) = try await Seed(db: db).user("big", role: .root)
        try await TestApp.build(db).test(.live) { client in
            let cases: [(HTTPRequest.Method, String, Int, String)] = [
                (.post, "/api/token/", 1 << 20, "system"),
                (.post, "/api/user/topup", 1 << 20, "system"),
                (.put, "/api/admin/prices", 4 << 20, "system"),
            ]
            for (method, uri, limit, envelope) in cases {
                let body = ByteBuffer(repeating: UInt8(ascii: " "), count: limit + 1)
                try await client.execute(
                    uri: uri, method: method,
                    headers: [.authorization: "Bearer \(access)", .contentType: "application/json"],
                    body: body
                ) { response in
                    #expect(response.status == .contentTooLarge, "\(method) \(uri)")
                    let error = try ErrorBody(response.body)
                    #expect(
                        error.code == "payload_too_large" && error.envelope == envelope
                            && error.tid == response.headers[.xTid], "\(uri)")
                }
            }
            try await client.execute(uri: "/healthz", method: .get, body: ByteBuffer(repeating: 0x41, count: 2 << 20)) {
                response in
                #expect(response.status == .ok)
            }
        }
    }

    @Test("a body past 32 MiB closes the connection on any route, instead of being read and discarded to its end")
    func endlessBody() async throws {
        let db = try await Self.database()
        try await TestApp.build(db).test(.live) { client in
            let connection = try RawConnection(port: try #require(client.port))
            let declared = 256 << 20
            await connection.send("POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: \(declared)\r\n\r\n")
            let chunk = [UInt8](repeating: 0x61, count: 1 << 20)
            var sent = 0
            while sent < declared, await connection.send(chunk) { sent += chunk.count }
            #expect(sent < declared, "the server read all \(declared) bytes")
            #expect(await connection.readUntilClosed(timeout: 30).closed)
            try await client.execute(uri: "/healthz", method: .get) { #expect($0.status == .ok) }
        }
    }

    @Test(
        "garbage in headers: malformed or non-UTF-8 credentials are 401 in the envelope, bad trace ids are replaced, unparseable heads get 400 and a closed connection"
    )
    func garbageHeaders() async throws {
        let db = try await Self.database()
        try await TestApp.build(db, { $0.failedAuthLimit = 0 }).test(.live) { client in
            for authorization in [
                "Bearer", "Bearer    ", "Basic Zm9vOmJhcg==", "Bearer " + String(repeating: "A", count: 16_384),
                "Bearer sk-\u{1F600}", "bearer\ttest-gateway-secret",
            ] {
                try await client.execute(
                    uri: "/gateway/v1/logs", method: .post, headers: [.authorization: authorization],
                    body: ByteBuffer(string: LogLines.chat("garbage-1"))
                ) { response in
                    #expect(response.status == .unauthorized, "\(authorization.prefix(30))")
                    let error = try ErrorBody(response.body)
                    #expect(["missing_token", "invalid_token"].contains(error.code) && TraceID.isValid(error.tid))
                }
            }
            for (name, value) in [
                ("traceparent", "00-zzzz-yyyy-01"), ("X-Tid", "../../etc"),
                ("X-Tid", String(repeating: "f", count: 5000)),
            ] {
                try await client.execute(uri: "/nope", method: .get, headers: [HTTPField.Name(name)!: value]) {
                    response in
                    let error = try ErrorBody(response.body)
                    #expect(response.status == .notFound && TraceID.isValid(error.tid) && error.tid != value)
                }
            }
            let port = try #require(client.port)
            let raw: [(String, [UInt8], Int)] = [
                (
                    "non-UTF-8 credentials",
                    Array("GET /api/user/self HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer ".utf8)
                        + [0xFF, 0xFE, 0xC0] + Array("\r\n\r\n".utf8), 401
                ),
                (
                    "a 100 KiB header",
                    Array(
                        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: \(String(repeating: "b", count: 100 << 10))\r\n\r\n"
                            .utf8), 400
                ),
                (
                    "a space in a header name", Array("GET /healthz HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n".utf8),
                    400
                ),
                ("a garbage request line", Array("HELLO\r\n\r\n".utf8), 400),
            ]
            for (name, request, status) in raw {
                let connection = try RawConnection(port: port)
                await connection.send(request)
                let (data, closed) = await connection.readUntilClosed(timeout: 30)
                #expect(
                    RawConnection.status(data) == status,
                    "\(name): \(String(decoding: data.prefix(200), as: UTF8.self))")
                #expect(closed, "\(name): connection left open")
                if status == 401 {
                    let body = String(decoding: data, as: UTF8.self).components(separatedBy: "\r\n\r\n").dropFirst()
                        .joined()
                    #expect(EnvelopeError(Data(body.utf8))?.code == "invalid_token", "\(name): \(body.prefix(200))")
                }
            }
        }
    }
}
