import Foundation
import TallyCore

/// Gateway log lines (DESIGN §4) for fuzzing ingest: valid lines priced by `designPriceSheet`
/// for the synthetic users, each with a unique request id, and mutations of them by
/// `JSONFuzzer` with the line's schema. The same seed gives the same cases.
public struct IngestLineFuzzer: Sendable {
    /// The reject codes of docs/ingest.md's table.
    public static let documentedRejectCodes: Set<String> = [
        "invalid_json", "invalid_usage", "invalid_field", "missing_field", "missing_usage", "unknown_key",
        "unknown_model", "unknown_group", "model_not_in_group", "size_not_supported", "no_price_version",
        "future_timestamp", "absurd_usage",
    ]

    /// The gateway line as ingest reads it.
    public static let schema: FuzzSchema = {
        let usage = FuzzSchema(fields: [
            // The parts must fit in prompt_tokens, and a media model needs its unit.
            "prompt_tokens": .init(.count, dependedOn: true), "completion_tokens": .init(.count),
            "cached_tokens": .init(.count), "cache_write_tokens": .init(.count), "audio_input_tokens": .init(.count),
            "audio_output_tokens": .init(.count),
            "images": .init(.count, dependedOn: true), "calls": .init(.count),
            "video_seconds": .init(.decimal, dependedOn: true), "predict_time": .init(.decimal, dependedOn: true),
            // An unknown size falls back to the model's default image price, if it has one.
            "size": .init(.any), "quality": .init(.any), "resolution": .init(.any),
        ])
        return FuzzSchema(fields: [
            "request_id": .init(.identifier(maxBytes: 128), required: true),
            "created_at": .init(
                .time(unknown: [
                    "2026-13-01T00:00:00Z", "2026-11-01 12:00:00", "yesterday", "2099-01-01T00:00:00Z",
                    "2020-01-01T00:00:00Z", "2026-11-01T25:00:00Z", "1e9",
                ]), required: true),
            "key": .init(
                .name(unknown: [
                    "sk-unknown", "sk-" + String(repeating: "f", count: 48), "tallysynthetic", "sk-tallysynthetic",
                ]),
                required: true),
            "model": .init(
                .name(unknown: [
                    "gpt-5-nope", "GPT-4O", "gpt-4o ", "dall-e-4", "../../etc/passwd", "'; DROP TABLE users; --",
                ]),
                required: true),
            "group": .init(.name(unknown: ["no-such-group", "DEFAULT", "svip "])),
            "kind": .init(.name(unknown: ["chatty", "CHAT", "text"])),
            "channel_id": .init(.count), "duration_ms": .init(.count),
            // Status 100…599 only; `null` means 200.
            "status": .init(.any), "stream": .init(.bool),
            "ip": .init(.text), "tid": .init(.text), "error": .init(.any),
            "usage": .init(.object(usage), required: true),
        ])
    }()

    public let seed: UInt64
    public let users: Int
    /// Prefix of every request id, so a run's rows are found again.
    public let prefix: String
    public private(set) var fuzzer: JSONFuzzer
    private var counter = 0

    public init(seed: UInt64, users: Int, prefix: String) {
        self.seed = seed
        self.users = users
        self.prefix = prefix
        fuzzer = JSONFuzzer(seed: seed, schema: Self.schema)
    }

    /// A valid line with a new request id: a chat, image, video, music or prediction request of
    /// a random synthetic user, with every field the gateway may send.
    public mutating func validLine() -> FuzzJSON {
        counter += 1
        let user = 1 + Int(fuzzer.random.next() % UInt64(users))
        let day = 1 + Int(fuzzer.random.next() % 20)
        let second = Int(fuzzer.random.next() % 86_400)
        let createdAt = String(
            format: "2026-11-%02dT%02d:%02d:%02d.%03dZ", day, second / 3600, second / 60 % 60, second % 60,
            Int(fuzzer.random.next() % 1000))
        var members: [FuzzJSON.Member] = [
            .init("request_id", .string("\(prefix)-\(counter)")),
            .init("created_at", .string(createdAt)),
            .init("key", .string(SyntheticKeys.key(forUser: user))),
        ]
        let usage: [FuzzJSON.Member]
        let model: String
        switch fuzzer.random.next() % 6 {
        case 0:
            model = "dall-e-3"
            usage = [
                .init("images", count(1...4)), .init("size", .string("1024x1024")),
                .init("quality", .string("standard")),
            ]
        case 1:
            model = "veo-3"
            usage = [
                .init("video_seconds", .number(["8", "5.5", "0.25"].randomElement(using: &fuzzer.random)!)),
                .init("resolution", .string(["720p", "1080p"].randomElement(using: &fuzzer.random)!)),
            ]
        case 2:
            model = "suno-v4"
            usage = [.init("calls", count(1...3))]
        case 3:
            model = "replicate/flux-schnell"
            usage = [.init("predict_time", .string("1.25")), .init("images", count(1...2))]
        default:
            model = ["gpt-4o", "claude-sonnet-4", "gemini-2.5-pro"].randomElement(using: &fuzzer.random)!
            usage = [
                .init("prompt_tokens", count(1...300_000)), .init("completion_tokens", count(0...4_000)),
                .init("cached_tokens", count(0...10)), .init("cache_write_tokens", .number("0")),
                .init("audio_input_tokens", .null), .init("audio_output_tokens", .number("0")),
            ]
        }
        members += [
            .init("model", .string(model)), .init("group", .string("default")), .init("channel_id", count(1...9)),
            .init("kind", .null), .init("status", .number("200")),
            .init("stream", .bool(fuzzer.random.next() % 2 == 0)),
            .init("duration_ms", count(0...60_000)), .init("ip", .string("203.0.113.\(fuzzer.random.next() % 256)")),
            .init("tid", .string(String(repeating: "ab", count: 16))), .init("usage", .object(usage)),
        ]
        return .object(members)
    }

    /// The next case: a valid line, then (most of the time) mutated.
    public mutating func next() -> FuzzCase {
        let line = validLine()
        return fuzzer.random.next() % 8 == 0 ? fuzzer.mutate(line, with: .none) : fuzzer.mutate(line)
    }

    private mutating func count(_ range: ClosedRange<Int>) -> FuzzJSON {
        .number(String(Int.random(in: range, using: &fuzzer.random)))
    }
}
