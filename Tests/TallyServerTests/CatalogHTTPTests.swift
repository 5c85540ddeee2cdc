import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyServer
import Testing

/// Every catalogue entry rendered by the real middleware over a real socket, in both envelopes.
/// The routes that raise them in production (authorize, System API) have their own tests; this
/// one pins the wire bytes of each entry.
@Suite("error catalog over HTTP")
struct CatalogHTTPTests {
    /// DESIGN §7, typed out again on purpose: a change to the catalogue must break this table.
    static let expected: [(code: String, status: Int, message: String)] = [
        (
            "model_not_available", 503,
            "Incorrect model ID. Please request to view the model page or you do not have permission to use this model"
        ),
        (
            "provider_rate_limited", 503,
            "Rate limited by provider – contact support to request higher concurrency or try again later."
        ),
        ("rate_limited", 429, "The gpt-4o model Too many requests; please try again later."),
        (
            "insufficient_user_quota", 403,
            "Your account balance is insufficient. Please recharge your account to continue using the API."
        ),
        ("account_suspended", 403, "Account suspended."),
        ("insufficient_permissions", 403, "Forbidden – insufficient permissions."),
        ("ip_not_allowed", 403, "Forbidden – key(a1B2c3) allowed only from approved IP ranges."),
        ("model_not_allowed", 403, "Forbidden – key(a1B2c3) not authorized to access the requested model."),
        ("channel_not_permitted", 403, "Key error;(a1B2c3)"),
        ("channel_disabled", 403, "Forbidden – channel has been disabled."),
        ("missing_token", 401, "Unauthorized – no access token supplied; please log in and include a valid token."),
        ("invalid_token", 401, "Unauthorized – access token is invalid or expired."),
        ("invalid_channel_id", 400, "Bad Request – invalid channel ID."),
        ("prompt_missing", 400, "prompt is required"),
        ("prompt_too_long", 400, "prompt is too long"),
        ("text_too_long", 400, "input is too long"),
        ("size_not_supported", 400, "size not supported"),
        ("n_not_within_range", 400, "invalid value of n"),
    ]

    static func app() -> some ApplicationProtocol {
        let router = Router(context: TallyRequestContext.self)
        router.add(middleware: TraceMiddleware())
        router.add(middleware: ErrorMiddleware())
        for prefix in ["/gateway/v1/probe", "/api/probe"] {
            router.get("\(prefix)/:code") { _, context -> Response in
                let code = try context.parameters.require("code")
                let entry = try #require(CatalogEntry(rawValue: code))
                throw APIError(entry, last6: "a1B2c3", model: "gpt-4o")
            }
        }
        return Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    }

    @Test("the catalogue has exactly the 18 entries of the design")
    func catalogueIsComplete() {
        #expect(CatalogEntry.allCases.map(\.rawValue).sorted() == Self.expected.map(\.code).sorted())
    }

    @Test("each entry: status, code, message byte for byte, tid in body equals X-Tid")
    func everyEntryInBothEnvelopes() async throws {
        try await Self.app().test(.live) { client in
            for entry in Self.expected {
                for (prefix, envelope) in [("/gateway/v1/probe", "gateway"), ("/api/probe", "system")] {
                    try await client.execute(uri: "\(prefix)/\(entry.code)", method: .get) { response in
                        #expect(Int(response.status.code) == entry.status, "\(entry.code)")
                        let body = try ErrorBody(response.body)
                        #expect(body.envelope == envelope)
                        #expect(body.code == entry.code)
                        #expect(Array(body.message.utf8) == Array(entry.message.utf8), "\(entry.code)")
                        #expect(TraceID.isValid(body.tid))
                        #expect(response.headers[.xTid] == body.tid)
                    }
                }
            }
        }
    }

    @Test("the tid comes from traceparent when one is given")
    func tidFromTraceparent() async throws {
        try await Self.app().test(.live) { client in
            try await client.execute(
                uri: "/gateway/v1/probe/invalid_token", method: .get,
                headers: [.traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
            ) { response in
                let body = try ErrorBody(response.body)
                #expect(body.tid == "0af7651916cd43dd8448eb211c80319c")
                #expect(response.headers[.xTid] == "0af7651916cd43dd8448eb211c80319c")
            }
        }
    }

    @Test("the EN DASH is U+2013 on the wire")
    func enDash() async throws {
        try await Self.app().test(.live) { client in
            try await client.execute(uri: "/api/probe/insufficient_permissions", method: .get) { response in
                let bytes = Array(response.body.readableBytesView)
                #expect(bytes.windows(ofCount: 3).contains { Array($0) == [0xE2, 0x80, 0x93] })
            }
        }
    }
}

extension Array where Element == UInt8 {
    func windows(ofCount count: Int) -> [ArraySlice<UInt8>] {
        guard self.count >= count else { return [] }
        return (0...(self.count - count)).map { self[$0..<($0 + count)] }
    }
}
