import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyServer
import TallyStore
import TallyTestSupport
import Testing

/// Mutated authorize bodies (JSONFuzzer with the body's schema) through the router and
/// PostgreSQL. `TALLY_FUZZ_SEED` replays a run; every failure names the seed and the case.
@Suite("authorize fuzzed")
struct AuthorizeFuzzTests {
    static let seed = ProcessInfo.processInfo.environment["TALLY_FUZZ_SEED"].flatMap(UInt64.init) ?? 20_261_124
    static let cases = 10_000
    static let users = 20

    /// The kinds of valid body, each with the schema its mutations are judged by: image and video
    /// models need a prompt (`prompt`, or its length `prompt_chars`), so for them the estimate and
    /// that field are required; a chat or per-call estimate may be left out.
    enum Family: CaseIterable {
        case image, video, perCall, chat

        var schema: FuzzSchema {
            var estimate: [String: FuzzSchema.Field] = [
                "prompt_tokens": .init(.wholeNumber), "completion_tokens": .init(.wholeNumber),
                "images": .init(.wholeNumber), "calls": .init(.wholeNumber), "max_tokens": .init(.wholeNumber),
                "prompt_chars": .init(.wholeNumber), "input_chars": .init(.wholeNumber), "n": .init(.any),
                "video_seconds": .init(.decimal), "size": .init(.any), "quality": .init(.any),
                "resolution": .init(.any),
                // Only measured, never stored: any string will do, even one with NUL; a long one
                // may pass the 64 KiB body limit.
                "prompt": .init(.any),
            ]
            switch self {
            case .image: estimate["prompt"]?.required = true
            case .video: estimate["prompt_chars"]?.required = true
            case .perCall, .chat: break
            }
            // JSONDecoder (authorize's parser) refuses nesting past 512 levels, root included.
            return FuzzSchema(
                fields: [
                    "request_id": .init(.identifier(maxBytes: 128), required: true),
                    "key": .init(
                        .name(unknown: ["sk-unknown", "sk-" + String(repeating: "f", count: 48), "Bearer sk-"]),
                        required: true),
                    "model": .init(
                        .name(unknown: ["gpt-5-nope", "GPT-4O", "'; DROP TABLE users; --"]), required: true),
                    "ip": .init(.any), "channel_id": .init(.any),
                    "estimate": .init(
                        .object(FuzzSchema(fields: estimate)), required: self == .image || self == .video),
                ], maxUnknownDepth: 511, depthCountsFromRoot: true)
        }
    }

    /// Every code authorize may answer: the catalog's (but provider_rate_limited, which comes
    /// from ingest) and the stable non-catalog ones.
    static let allowedCodes = Set(CatalogEntry.allCases.map(\.rawValue)).subtracting(["provider_rate_limited"])
        .union(["invalid_request", "payload_too_large"])

    @Test(
        "10,000 mutated bodies: no crash, 200 with a hold or an enveloped catalog error with a tid; refusals reserve nothing"
    )
    func fuzz() async throws {
        let db = try await TestDatabase.create("authorizefuzz")
        try await db.prepareBilling(users: Self.users, quota: 1_000_000_000)
        let seed = Seed(db: db)
        _ = try await seed.channel(
            groups: ["default"], models: ["gpt-4o", "dall-e-3", "veo-3", "suno-v4", "claude-sonnet-4"])
        let (held, holds, codes) = try await TestApp.build(db).test(.router) { client in
            var random = SplitMix64(seed: Self.seed)
            var fuzzers = Dictionary(
                uniqueKeysWithValues: Family.allCases.enumerated().map { index, family in
                    (family, JSONFuzzer(seed: Self.seed &+ UInt64(index + 1), schema: family.schema))
                })
            var held: Int64 = 0
            var holds = 0
            var codes: [String: Int] = [:]
            for index in 0..<Self.cases {
                let (family, valid) = Self.validBody(index, random: &random)
                let input =
                    index % 10 == 0
                    ? fuzzers[family]!.mutate(valid, with: .none)
                    : fuzzers[family]!.mutate(valid)
                let response = try await client.execute(
                    uri: "/gateway/v1/authorize", method: .post,
                    headers: [.authorization: "Bearer test-gateway-secret", .contentType: "application/json"],
                    body: ByteBuffer(bytes: input.bytes))
                let where_ = "seed \(Self.seed), case \(index) (\(input.mutation)): \(input.text)"
                let object = (try? JSONSerialization.jsonObject(with: Data(buffer: response.body))) as? [String: Any]
                // Each case's verdict, as the schema says (every synthetic balance covers every
                // valid body, so a valid one is refused only for what the mutation did).
                switch input.expectation {
                case .accept:
                    let answer = String(buffer: response.body).prefix(300)
                    #expect(response.status == .ok, "must be accepted: \(where_) → \(response.status) \(answer)")
                case .reject: #expect(response.status != .ok, "must be refused: \(where_)")
                case .either: break
                }
                if response.status == .ok {
                    let amount = try #require((object?["held"] as? NSNumber)?.int64Value, "\(where_)")
                    if object?["duplicate"] as? Bool == false {
                        held += amount
                        holds += 1
                    }
                    codes["held", default: 0] += 1
                } else {
                    let error = object?["error"] as? [String: Any]
                    let code = error?["code"] as? String ?? "?"
                    #expect(Self.allowedCodes.contains(code), "\(response.status) \(code): \(where_)")
                    #expect((error?["tid"] as? String)?.count == 32, "\(where_)")
                    #expect(response.status.code != 500, "\(where_)")
                    codes[code, default: 0] += 1
                }
            }
            return (held, holds, codes)
        }
        print(
            "authorize fuzz (seed \(Self.seed)): \(Self.cases) bodies: "
                + codes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        #expect(holds > 500 && codes.count > 4)
        // Exactly the granted holds are reserved; nothing else changed a balance.
        #expect(try await db.scalar("SELECT count(*) FROM holds") == Int64(holds))
        #expect(try await db.scalar("SELECT coalesce(sum(reserved), 0)::bigint FROM user_balances") == held)
        #expect(
            try await db.scalar("SELECT sum(quota)::bigint FROM user_balances") == Int64(Self.users) * 1_000_000_000)
        #expect(try await Auditor(pool: db.pool).run().isEmpty)
    }

    /// A valid authorize body for a synthetic user: a chat, image, video or per-call request.
    static func validBody(_ index: Int, random: inout SplitMix64) -> (Family, FuzzJSON) {
        let user = 1 + Int(random.next() % UInt64(users))
        let family = Family.allCases[Int(random.next() % UInt64(Family.allCases.count))]
        let estimate: [FuzzJSON.Member]
        let model: String
        switch family {
        case .image:
            model = "dall-e-3"
            estimate = [
                .init("prompt", .string("a lighthouse at dusk")), .init("n", .number("1")),
                .init("size", .string("1024x1024")),
                .init("quality", .string("standard")),
            ]
        case .video:
            model = "veo-3"
            estimate = [
                .init("prompt_chars", .number("40")), .init("video_seconds", .number("8")),
                .init("resolution", .string("720p")),
            ]
        case .perCall:
            model = "suno-v4"
            estimate = [.init("prompt", .string("a song")), .init("calls", .number("1"))]
        case .chat:
            model = ["gpt-4o", "claude-sonnet-4"][Int(random.next() % 2)]
            estimate = [
                .init("prompt_tokens", .number(String(random.next() % 5_000))),
                .init("max_tokens", .number(String(random.next() % 2_000))),
            ]
        }
        return (
            family,
            .object([
                .init("request_id", .string("fuzz-\(index)")), .init("key", .string(SyntheticKeys.key(forUser: user))),
                .init("model", .string(model)), .init("ip", .string("203.0.113.\(random.next() % 256)")),
                .init("estimate", .object(estimate)),
            ])
        )
    }
}
