import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyServer
import TallyTestSupport
import Testing

@Suite("server skeleton over real HTTP")
struct FoundationHTTPTests {
    @Test("/healthz and /readyz answer with an X-Tid header")
    func healthAndReadiness() async throws {
        let db = try await TestDatabase.shared("server")
        try await TestApp.build(db).test(.live) { client in
            try await client.execute(uri: "/healthz", method: .get) { response in
                #expect(response.status == .ok)
                #expect(TraceID.isValid(response.headers[.xTid] ?? ""))
            }
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == #"{"status":"ready"}"#)
            }
        }
    }

    @Test("/readyz answers 503 with a tid when the database cannot be reached")
    func readinessWithoutDatabase() async throws {
        let db = try await TestDatabase.shared("server")
        // Build against a live database (migrations run at start), then serve with one that is gone.
        _ = try await TestApp.build(db)
        var configuration = TestApp.configuration(db)
        configuration.databaseURL = "postgres://tally@127.0.0.1:1/none?connect_timeout=2"
        let router = buildRouter(
            TallyServices(pool: .init(url: configuration.databaseURL, size: 1)), configuration: configuration)
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                let body = try ErrorBody(response.body)
                #expect(body.code == "database_unavailable")
                #expect(body.tid == response.headers[.xTid])
            }
        }
    }

    @Test("/metrics is Prometheus text format and counts requests")
    func metrics() async throws {
        let db = try await TestDatabase.shared("server")
        try await TestApp.build(db).test(.live) { client in
            _ = try await client.execute(uri: "/healthz", method: .get)
            try await client.execute(uri: "/metrics", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType]?.hasPrefix("text/plain; version=0.0.4") == true)
                let text = String(buffer: response.body)
                #expect(text.contains("# TYPE "))
                #expect(text.contains(#"http_route="/healthz""#))
                // Label values may hold any character but an unescaped quote (routes like /api/token/{id}).
                let sample = try Regex(
                    #"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$"#
                )
                for line in text.split(separator: "\n") where !line.hasPrefix("#") {
                    #expect(line.wholeMatch(of: sample) != nil, "not a Prometheus sample: \(line)")
                }
            }
        }
    }

    @Test("unknown routes answer 404 in the envelope of their path, tid from traceparent")
    func unknownRoutes() async throws {
        let db = try await TestDatabase.shared("server")
        let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
        try await TestApp.build(db).test(.live) { client in
            try await client.execute(
                uri: "/v1/nothing-here", method: .get,
                headers: [.traceparent: "00-\(traceID)-00f067aa0ba902b7-01"]
            ) { response in
                #expect(response.status == .notFound)
                let body = try ErrorBody(response.body)
                #expect(body.envelope == "gateway")
                #expect(body.code == "not_found")
                #expect(body.tid == traceID)
                #expect(response.headers[.xTid] == traceID)
            }
            try await client.execute(
                uri: "/api/nothing-here", method: .get,
                headers: [.xTid: "ABCDEF0123456789ABCDEF0123456789"]
            ) { response in
                let body = try ErrorBody(response.body)
                #expect(body.envelope == "system")
                #expect(body.tid == "abcdef0123456789abcdef0123456789")
                #expect(response.headers[.xTid] == body.tid)
            }
            try await client.execute(uri: "/api/nothing-here", method: .get, headers: [.xTid: "not a tid; <script>"]) {
                response in
                let body = try ErrorBody(response.body)
                #expect(TraceID.isValid(body.tid))
                #expect(response.headers[.xTid] == body.tid)
            }
        }
    }
}
