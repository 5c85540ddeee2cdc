import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyServer
import TallyTestSupport
import Testing

/// `POST /gateway/v1/logs?format=litellm` with what LiteLLM 1.110.2's generic_api logger really
/// sends (Tests/Fixtures/litellm-1.110.2-batch.json), in its three `log_format`s: a JSON array
/// (the default), `ndjson`, and `single` (one payload per request, no newline).
@Suite("LiteLLM logger batches over HTTP", .serialized)
struct LiteLLMIngestHTTPTests {
    static let initialQuota: Int64 = 1_000_000_000
    static let fixture = TestCluster.repositoryRoot
        .appendingPathComponent("Tests/Fixtures/litellm-1.110.2-batch.json")
    static let plainCall = "7befd9d5-5736-4dec-806c-9a1d78ea5552"
    static let failedCall = "18a33689-a33d-4edc-8ac4-050465b58a74"
    static let cachedCall = "7be32a61-5bcc-4b81-a79d-434999b8e246"
    /// gpt-4o at DESIGN §3's prices: 10 in, 20 out = 112.5 → 113 units.
    static let plainCost: Int64 = 113
    /// 2,000 in of which 1,500 cached, 100 out: 500 × 2.50 + 1,500 × 1.25 + 100 × 10.00 per 1M
    /// = $0.004125 = 2,062.5 → 2,063 units (3,000 if the cached tokens were billed as input).
    static let cachedCost: Int64 = 2063

    static func post(_ client: some TestClientProtocol, _ body: String) async throws -> [String: Any] {
        try await client.execute(
            uri: "/gateway/v1/logs?format=litellm", method: .post,
            headers: [
                .authorization: "Bearer test-gateway-secret",
                .contentType: "application/json",
            ],
            body: ByteBuffer(string: body)
        ) { response in
            #expect(response.status == .ok)
            return try JSONSerialization.jsonObject(with: Data(buffer: response.body)) as? [String: Any] ?? [:]
        }
    }

    /// The fixture's payloads with `suffix` appended to their call ids (new requests).
    static func payloads(suffix: String) throws -> [String] {
        let parsed = try JSONSerialization.jsonObject(with: Data(contentsOf: fixture))
        let objects = try #require(parsed as? [[String: Any]])
        return try objects.map { object in
            var copy = object
            copy["litellm_call_id"] = "\(object["litellm_call_id"] as? String ?? "")\(suffix)"
            return String(decoding: try JSONSerialization.data(withJSONObject: copy), as: UTF8.self)
        }
    }

    @Test("json_array, ndjson and single bodies: model_group priced, cached tokens at the cached price, 429s free")
    func threeFormats() async throws {
        let db = try await TestDatabase.shared("litellm-ingest")
        try await db.prepareBilling(users: 1, quota: Self.initialQuota)
        let array = try String(contentsOf: Self.fixture, encoding: .utf8)
        let ndjson = try Self.payloads(suffix: "-ndjson").joined(separator: "\n")
        let singles = try Self.payloads(suffix: "-single")
        try await TestApp.build(db).test(.live) { client in
            #expect(try await Self.post(client, array)["accepted"] as? Int == 3)
            #expect(try await Self.post(client, ndjson)["accepted"] as? Int == 3)
            for single in singles { #expect(try await Self.post(client, single)["accepted"] as? Int == 1) }
            // Resent, in another format: all duplicates, nothing charged again.
            let resent = try await Self.post(client, "[" + singles.joined(separator: ",") + "]")
            #expect(resent["accepted"] as? Int == 0 && resent["duplicates"] as? Int == 3)
        }
        for suffix in ["", "-ndjson", "-single"] {
            let cached = [Self.cachedCall + suffix]
            let quota = "SELECT quota FROM request_logs WHERE request_id = $1"
            #expect(try await db.scalar(quota, cached) == Self.cachedCost)
            #expect(try await db.scalar(quota, [Self.plainCall + suffix]) == Self.plainCost)
            let cachedTokens = "SELECT cached_tokens FROM request_logs WHERE request_id = $1 AND model = 'gpt-4o'"
            #expect(try await db.scalar(cachedTokens, cached) == 1500)
            #expect(
                try await db.scalar(
                    """
                    SELECT count(*) FROM request_logs
                    WHERE request_id = $1 AND status = 429 AND error = 'provider_rate_limited' AND quota = 0
                    """, [Self.failedCall + suffix]) == 1)
        }
        let balance = try await db.scalar(
            "SELECT quota FROM users WHERE username = $1",
            [SyntheticKeys.username(forUser: 1)])
        #expect(balance == Self.initialQuota - 3 * (Self.plainCost + Self.cachedCost))
    }
}
