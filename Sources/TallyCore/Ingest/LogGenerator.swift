import Foundation

/// Deterministic keys of the synthetic accounts that `tally logs seed` creates for tests and
/// benchmarks. They are public knowledge: never seed them into a production database.
public enum SyntheticKeys {
    /// `sk-tallysynthetic` + the user index zero-padded to 34 digits (48 characters after `sk-`).
    public static func key(forUser index: Int) -> String {
        var bytes: [UInt8] = []
        appendKey(forUser: index, to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The same key, appended as bytes (for load generators that build requests byte by byte).
    public static func appendKey(forUser index: Int, to bytes: inout [UInt8]) {
        bytes += "sk-tallysynthetic".utf8
        let digits = Array(String(index).utf8)
        bytes += repeatElement(UInt8(ascii: "0"), count: 34 - digits.count)
        bytes += digits
    }

    public static func username(forUser index: Int) -> String { "synthetic-\(index)" }
}

/// Writes realistic gateway log lines (DESIGN §4) for tests and benchmarks: a zipf or uniform
/// mix of users, a mix of chat, image, video and per-call models, provider 429s, duplicates and
/// bad lines at given rates. The same seed gives the same lines.
public struct LogGenerator {
    public enum Skew: String, Sendable, CaseIterable { case uniform, zipf }

    public struct Options: Sendable {
        public var users = 100
        public var models = [
            "gpt-4o", "gpt-4o-mini", "claude-sonnet-4", "gemini-2.5-pro", "deepseek-chat",
            "dall-e-3", "veo-3", "suno-v4",
        ]
        public var duplicateRate = 0.0
        public var badRate = 0.0
        public var skew = Skew.zipf
        public var seed: UInt64 = 42
        /// Lines are spread over [start, start + span).
        public var start = Date(timeIntervalSince1970: 1_793_491_200)  // 2026-11-01T00:00:00Z
        public var span: TimeInterval = 86_400
        public var lines = 1000

        public init() {}
    }

    private let options: Options
    private var random: SplitMix64
    private let userCDF: [Double]
    private var emitted: [String] = []
    private var produced = 0

    public init(_ options: Options) {
        self.options = options
        random = SplitMix64(seed: options.seed)
        userCDF = Self.cdf(users: max(options.users, 1), skew: options.skew)
    }

    /// The next line (no trailing newline), or nil after `options.lines` lines.
    public mutating func next() -> String? {
        guard produced < options.lines else { return nil }
        produced += 1
        let roll = random.nextUnit()
        if roll < options.duplicateRate {
            // Before any line can be repeated, a good one (never a bad one: --bad-rate 0 means none).
            if !emitted.isEmpty { return emitted[Int(random.next() % UInt64(emitted.count))] }
        } else if roll < options.duplicateRate + options.badRate {
            return badLine()
        }
        let line = goodLine()
        if options.duplicateRate > 0 {
            if emitted.count < 10_000 { emitted.append(line) } else { emitted[Int(random.next() % 10_000)] = line }
        }
        return line
    }

    private mutating func goodLine() -> String {
        let user = pickUser()
        let modelIndex = Int(random.next() % UInt64(options.models.count))
        let model = options.models[modelIndex]
        // A gateway routes each model through its channels: four here, by model.
        let channel = 1 + modelIndex % 4
        let offset = random.nextUnit() * options.span
        let created = options.start.addingTimeInterval(offset)
        let failed = random.nextUnit() < 0.02
        var usage: String
        // Each model of ops/prices/default.yaml that is not priced by tokens gets its own unit
        // (ingest rejects a success of such a model without it, as missing_usage).
        switch model {
        case "dall-e-3", "gpt-image-1", "flux-pro", "flux-dev", "ideogram-v3", "ideogram-v3-turbo",
            "doubao-seedream-3":
            usage = #"{"images":1,"size":"1024x1024","quality":"standard"}"#
        case "whisper-1", "replicate/flux-schnell":
            usage = #"{"predict_time":"2.5","images":1}"#
        case "veo-3", "veo-3-fast", "kling-v2-1", "kling-v2-master", "luma-ray-2", "runway-gen4-turbo", "hailuo-02",
            "doubao-seedance-1-0-pro":
            usage =
                #"{"video_seconds":\#(random.next() % 2 == 0 ? "8" : "5.5"),"resolution":"\#(random.next() % 2 == 0 ? "720p" : "1080p")"}"#
        case "suno-v4", "suno-v4.5", "mj_imagine":
            usage = #"{"calls":1}"#
        default:
            let prompt = 20 + Int(random.next() % 4000)
            let cached = random.next() % 4 == 0 ? Int(random.next() % UInt64(prompt)) : 0
            usage =
                #"{"prompt_tokens":\#(prompt),"completion_tokens":\#(1 + random.next() % 1500),"cached_tokens":\#(cached)}"#
        }
        if failed { usage = "null" }
        let error = failed ? #","error":"provider_rate_limited""# : ""
        return
            #"{"request_id":"\#(requestID(created))","created_at":"\#(Self.rfc3339(created))","key":"\#(SyntheticKeys.key(forUser: user))","model":"\#(model)","channel_id":\#(channel),"status":\#(failed ? 429 : 200),"stream":\#(random.next() % 2 == 0),"duration_ms":\#(random.next() % 20_000),"tid":"\#(hex(random.next()))\#(hex(random.next()))","usage":\#(usage)\#(error)}"#
    }

    private mutating func badLine() -> String {
        let created = Self.rfc3339(options.start.addingTimeInterval(random.nextUnit() * options.span))
        switch random.next() % 5 {
        case 0: return #"{"request_id":"bad-\#(hex(random.next()))","created_at":"#  // truncated JSON
        case 1:
            return
                #"{"created_at":"\#(created)","key":"\#(SyntheticKeys.key(forUser: 1))","model":"gpt-4o","usage":{"prompt_tokens":1}}"#
        case 2:
            return
                #"{"request_id":"bad-\#(hex(random.next()))","created_at":"\#(created)","key":"sk-unknown\#(hex(random.next()))","model":"gpt-4o","usage":{"prompt_tokens":10,"completion_tokens":5}}"#
        case 3:
            return
                #"{"request_id":"bad-\#(hex(random.next()))","created_at":"\#(created)","key":"\#(SyntheticKeys.key(forUser: 1))","model":"gpt-4o","usage":{"prompt_tokens":-5}}"#
        default:
            return
                #"{"request_id":"bad-\#(hex(random.next()))","created_at":"\#(created)","key":"\#(SyntheticKeys.key(forUser: 1))","model":"no-such-model","usage":{"prompt_tokens":10}}"#
        }
    }

    private mutating func pickUser() -> Int {
        let roll = random.nextUnit()
        var low = 0
        var high = userCDF.count - 1
        while low < high {
            let middle = (low + high) / 2
            if userCDF[middle] < roll { low = middle + 1 } else { high = middle }
        }
        return low + 1
    }

    /// Time-ordered ids (UUIDv7 layout: 48-bit milliseconds, then random bits).
    private mutating func requestID(_ created: Date) -> String {
        let millis = UInt64(created.timeIntervalSince1970 * 1000)
        let high = hex(millis << 16 | 0x7000 | (random.next() & 0x0fff))
        let low = hex(random.next() & 0x3fff_ffff_ffff_ffff | 0x8000_0000_0000_0000)
        let text = high + low
        let chars = Array(text)
        return String(chars[0..<8]) + "-" + String(chars[8..<12]) + "-" + String(chars[12..<16]) + "-"
            + String(chars[16..<20]) + "-" + String(chars[20..<32])
    }

    private func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    static func cdf(users: Int, skew: Skew) -> [Double] {
        let weights = (1...users).map { skew == .zipf ? 1 / pow(Double($0), 1.1) : 1 }
        let total = weights.reduce(0, +)
        var running = 0.0
        return weights.map {
            running += $0 / total; return running
        }
    }

    static func rfc3339(_ date: Date) -> String {
        let millis = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        var seconds = time_t(millis / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(
            format: "%04d-%02d-%02dT%02d:%02d:%02d.%03lldZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday,
            parts.tm_hour, parts.tm_min, parts.tm_sec, millis % 1000)
    }
}

/// A small, fast, seedable generator (not for secrets): the same seed gives the same sequence,
/// which makes generated logs and fuzz cases reproducible.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}
