import TallyCore

/// A JSON value as the fuzzers build it. `number` keeps its text, so huge, negative or odd
/// numbers are written exactly; `raw` bytes are written as they are (broken syntax, invalid
/// UTF-8, control bytes).
public indirect enum FuzzJSON: Sendable {
    case object([Member])
    case array([FuzzJSON])
    case string(String)
    case number(String)
    case bool(Bool)
    case null
    case raw([UInt8])

    public struct Member: Sendable {
        public var key: String
        public var value: FuzzJSON

        public init(_ key: String, _ value: FuzzJSON) {
            self.key = key
            self.value = value
        }
    }

    /// The UTF-8 JSON text (raw parts verbatim).
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        write(to: &out)
        return out
    }

    public func write(to out: inout [UInt8]) {
        switch self {
        case .object(let members):
            out.append(UInt8(ascii: "{"))
            for (index, member) in members.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                out += Array(JSONText.quote(member.key).utf8)
                out.append(UInt8(ascii: ":"))
                member.value.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                item.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .string(let text): out += Array(JSONText.quote(text).utf8)
        case .number(let text): out += Array(text.utf8)
        case .bool(let value): out += Array((value ? "true" : "false").utf8)
        case .null: out += Array("null".utf8)
        case .raw(let bytes): out += bytes
        }
    }

    /// The members of an object (empty for other values).
    public var members: [Member] {
        if case .object(let members) = self { return members }
        return []
    }
}

/// What a field of a fuzzed object must hold, so a mutation knows whether the receiver has to
/// refuse it. Each consumer (ingest lines, authorize bodies) describes its own objects.
public struct FuzzSchema: Sendable {
    public indirect enum Kind: Sendable {
        /// A string of at most `maxBytes` bytes; any such value is fine.
        case identifier(maxBytes: Int)
        /// A string that must name something known (model, key, group, time …); `unknown` are
        /// well-formed values that name nothing and must be refused.
        case name(unknown: [String])
        /// A time: a string that must name one (RFC 3339), or a Unix time as a JSON number;
        /// `unknown` are well-formed strings that name no usable time and must be refused.
        case time(unknown: [String])
        /// Any string is accepted.
        case text
        /// A non-negative JSON integer that fits Int64.
        case count
        /// A non-negative number with an integral value that fits Int64, in any notation (`2e3`
        /// is 2000), as Foundation's JSONDecoder reads an Int64.
        case wholeNumber
        /// A non-negative exact decimal (number or numeric string).
        case decimal
        case bool
        case object(FuzzSchema)
        /// No expectation (several types are accepted, or the meaning depends on other fields).
        case any
    }

    public struct Field: Sendable {
        public var kind: Kind
        /// Refused when absent or null.
        public var required: Bool
        /// Absent or null, it may break a rule across fields (a part above its total, a model
        /// priced by it): either answer is right.
        public var dependedOn: Bool

        public init(_ kind: Kind, required: Bool = false, dependedOn: Bool = false) {
            self.kind = kind
            self.required = required
            self.dependedOn = dependedOn
        }
    }

    public var fields: [String: Field]
    /// Nesting the receiver allows inside an unknown member's value (deeper is refused).
    public var maxUnknownDepth: Int
    /// The limit counts from the root object's members (a parser with one depth limit for the
    /// whole document, like JSONDecoder's), not from the unknown value itself.
    public var depthCountsFromRoot: Bool

    public init(fields: [String: Field], maxUnknownDepth: Int = 64, depthCountsFromRoot: Bool = false) {
        self.fields = fields
        self.maxUnknownDepth = maxUnknownDepth
        self.depthCountsFromRoot = depthCountsFromRoot
    }
}

/// One generated input and what the receiver must do with it.
public struct FuzzCase: Sendable {
    public enum Expectation: String, Sendable {
        case accept, reject, either
    }

    public var bytes: [UInt8]
    /// What was done to the valid input, e.g. `wrong_type usage.prompt_tokens`.
    public var mutation: String
    public var expectation: Expectation

    public init(bytes: [UInt8], mutation: String, expectation: Expectation) {
        self.bytes = bytes
        self.mutation = mutation
        self.expectation = expectation
    }

    /// The bytes as text (invalid UTF-8 shown as U+FFFD), for failure messages.
    public var text: String { String(decoding: bytes.prefix(400), as: UTF8.self) }
}

/// Mutates valid JSON objects, deterministically from a seed: truncation, byte flips, trailing
/// garbage, wrong types, null and missing fields, huge / negative / fractional numbers,
/// over-long strings, invalid UTF-8, raw and escaped NUL, deep nesting, duplicated and unknown
/// keys, unknown names. Never produces a line break (0x0A, 0x0D), so each case stays one NDJSON
/// line. Each case says, from the schema, whether the receiver must accept or refuse it.
public struct JSONFuzzer: Sendable {
    public let seed: UInt64
    public var random: SplitMix64
    public let schema: FuzzSchema

    public init(seed: UInt64, schema: FuzzSchema) {
        self.seed = seed
        random = SplitMix64(seed: seed)
        self.schema = schema
    }

    /// The mutations, each a function of (valid object) → case.
    public enum Mutation: String, CaseIterable, Sendable {
        case none, truncate, flipByte = "flip_byte", trailingGarbage = "trailing_garbage", wrongType = "wrong_type",
            null, dropField = "drop_field", hugeNumber = "huge_number", negativeNumber = "negative_number",
            fraction, overlongString = "overlong_string", invalidUTF8 = "invalid_utf8", rawControl = "raw_control",
            escapedNUL = "escaped_nul", deepNesting = "deep_nesting", duplicateKey = "duplicate_key",
            unknownKey = "unknown_key", unknownName = "unknown_name", notAnObject = "not_an_object"
    }

    /// A random mutation of `valid` (an object matching the schema).
    public mutating func mutate(_ valid: FuzzJSON) -> FuzzCase {
        let mutation = Mutation.allCases.randomElement(using: &random)!
        return mutate(valid, with: mutation)
    }

    public mutating func mutate(_ valid: FuzzJSON, with mutation: Mutation) -> FuzzCase {
        switch mutation {
        case .none: return FuzzCase(bytes: valid.bytes, mutation: "none", expectation: .accept)
        case .truncate:
            let bytes = valid.bytes
            let cut = Int.random(in: 1..<bytes.count, using: &random)
            return FuzzCase(bytes: Array(bytes[..<cut]), mutation: "truncate at \(cut)", expectation: .reject)
        case .flipByte:
            var bytes = valid.bytes
            let count = Int.random(in: 1...4, using: &random)
            for _ in 0..<count {
                bytes[Int.random(in: 0..<bytes.count, using: &random)] = randomByte()
            }
            return FuzzCase(bytes: bytes, mutation: "flip \(count) bytes", expectation: .either)
        case .trailingGarbage:
            let garbage = ["x", "}", ",", "{}", " 1", "\"", "]", "\u{0}", "null"].randomElement(using: &random)!
            return FuzzCase(
                bytes: valid.bytes + Array(garbage.utf8), mutation: "trailing \(garbage.debugDescription)",
                expectation: .reject)
        case .notAnObject:
            let other: FuzzJSON = [.array([valid]), .string("line"), .number("42"), .null, .bool(true), .array([])]
                .randomElement(using: &random)!
            return FuzzCase(bytes: other.bytes, mutation: "not an object", expectation: .reject)
        case .deepNesting:
            let depth = [8, schema.maxUnknownDepth, schema.maxUnknownDepth + 1, 1_000, 10_000].randomElement(
                using: &random)!
            let open = random.next() % 2 == 0 ? "[" : "{\"a\":"
            let close = open == "[" ? "]" : "}"
            let innermost = open == "[" ? "" : "0"
            let nested = FuzzJSON.raw(
                Array((String(repeating: open, count: depth) + innermost + String(repeating: close, count: depth)).utf8)
            )
            guard let chosen = pickMember(of: valid) else {
                return FuzzCase(bytes: valid.bytes, mutation: "none", expectation: .accept)
            }
            // Inserted next to the chosen member: one level deeper per object it sits in.
            let allowed = schema.maxUnknownDepth - (schema.depthCountsFromRoot ? chosen.path.count - 1 : 0)
            return FuzzCase(
                bytes: apply(valid, at: chosen.path[...], .insert(FuzzJSON.Member("x_fuzz_deep", nested))).bytes,
                mutation: "deep nesting \(depth) after \(chosen.label)",
                expectation: depth <= allowed ? .accept : .reject)
        case .unknownKey:
            let member = FuzzJSON.Member("x_fuzz_\(random.next() % 1000)", randomValue(depth: 3))
            return edit(valid, named: "unknown key", .insert(member), expect: .accept)
        default:
            return mutateField(valid, with: mutation)
        }
    }

    /// Mutations that pick one known field (at any depth) and change it.
    private mutating func mutateField(_ valid: FuzzJSON, with mutation: Mutation) -> FuzzCase {
        guard let chosen = pickMember(of: valid) else {
            return FuzzCase(bytes: valid.bytes, mutation: "none", expectation: .accept)
        }
        let (edit, expectation) = fieldEdit(mutation, chosen.member, chosen.field)
        return FuzzCase(
            bytes: apply(valid, at: chosen.path[...], edit).bytes, mutation: "\(mutation.rawValue) \(chosen.label)",
            expectation: expectation)
    }

    /// The edit of one member for a mutation, and what the receiver must then do.
    private mutating func fieldEdit(_ mutation: Mutation, _ member: FuzzJSON.Member, _ field: FuzzSchema.Field?) -> (
        Edit, FuzzCase.Expectation
    ) {
        let kind = field?.kind ?? .any
        let required = field?.required ?? false
        let absentIsEither = kind.isAny || field?.dependedOn == true
        switch mutation {
        case .null:
            return (.replace(.null), required ? .reject : (absentIsEither ? .either : .accept))
        case .dropField:
            return (.remove, required ? .reject : (absentIsEither ? .either : .accept))
        case .duplicateKey:
            return (.insert(member), .accept)
        case .wrongType:
            let candidates: [FuzzJSON] = [.number("7"), .string("seven"), .bool(true), .array([]), .object([])]
                .filter { !kind.accepts($0) }
            guard let value = candidates.randomElement(using: &random) else { return (.replace(.number("7")), .either) }
            return (.replace(value), kind.isAny ? .either : .reject)
        case .hugeNumber:
            let value = ["99999999999999999999", "9223372036854775808", "1e400", "123456789012345678901234567890.5"]
                .randomElement(using: &random)!
            return (.replace(.number(value)), kind.isAny ? .either : .reject)
        case .negativeNumber:
            let value = ["-1", "-9223372036854775808", "-0.5", "-1e3"].randomElement(using: &random)!
            return (.replace(.number(value)), kind.isAny ? .either : .reject)
        case .fraction:
            let value = ["1.5", "2e3", "0.000001", "1E+2"].randomElement(using: &random)!
            switch kind {
            case .decimal, .any: return (.replace(.number(value)), .either)
            case .wholeNumber:
                let whole = Double(value).map { $0 == $0.rounded() } ?? false
                return (.replace(.number(value)), whole ? .accept : .reject)
            default: return (.replace(.number(value)), .reject)
            }
        case .overlongString:
            // Past 64 KiB too: the stored copy of a rejected line is cut there.
            let length = [200, 5_000, 70_000].randomElement(using: &random)!
            let text = [UInt8](repeating: UInt8(ascii: "a"), count: length)
            return (
                .replace(.raw([UInt8(ascii: "\"")] + text + [UInt8(ascii: "\"")])),
                kind.expectationForString(String(decoding: text, as: UTF8.self))
            )
        case .invalidUTF8:
            let bad: [UInt8] = [
                [0xFF], [0xC3, 0x28], [0x80], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80],
            ].randomElement(using: &random)!
            let text = Array((member.value.stringValue ?? "v").utf8)
            let cut = text.isEmpty ? 0 : Int.random(in: 0...text.count, using: &random)
            let bytes = [UInt8(ascii: "\"")] + text[..<cut] + bad + text[cut...] + [UInt8(ascii: "\"")]
            return (.replace(.raw(bytes)), kind.isString ? .either : (kind.isAny ? .either : .reject))
        case .rawControl:
            let control = UInt8([0x00, 0x01, 0x09, 0x1B, 0x1F].randomElement(using: &random)!)
            let text = Array((member.value.stringValue ?? "v").utf8)
            let cut = Int.random(in: 0...text.count, using: &random)
            return (
                .replace(.raw([UInt8(ascii: "\"")] + text[..<cut] + [control] + text[cut...] + [UInt8(ascii: "\"")])),
                .reject
            )
        case .escapedNUL:
            let text = (member.value.stringValue ?? "v")
            // A string with NUL is refused in every known text field; elsewhere it is a value like another.
            return (.replace(.string(text + "\u{0}")), kind.isString ? .reject : (kind.isAny ? .either : .reject))
        case .unknownName:
            guard let name = kind.unknownNames.randomElement(using: &random) else {
                let text = "fuzz-\(random.next())"
                return (.replace(.string(text)), kind.expectationForString(text))
            }
            return (.replace(.string(name)), .reject)
        default:
            return (.keep, .accept)
        }
    }

    enum Edit {
        case keep, remove, replace(FuzzJSON), insert(FuzzJSON.Member)
    }

    /// Applies `edit` to a random member (at any depth) of `valid`.
    private mutating func edit(_ valid: FuzzJSON, named name: String, _ edit: Edit, expect: FuzzCase.Expectation)
        -> FuzzCase
    {
        guard let chosen = pickMember(of: valid) else {
            return FuzzCase(bytes: valid.bytes, mutation: "none", expectation: .accept)
        }
        return FuzzCase(
            bytes: apply(valid, at: chosen.path[...], edit).bytes, mutation: "\(name) after \(chosen.label)",
            expectation: expect)
    }

    /// A random member of `valid` or of the objects the schema describes inside it.
    private mutating func pickMember(of valid: FuzzJSON) -> (
        path: [Int], label: String, member: FuzzJSON.Member, field: FuzzSchema.Field?
    )? {
        var members: [(path: [Int], label: String, member: FuzzJSON.Member, field: FuzzSchema.Field?)] = []
        collect(valid, schema: schema, indices: [], label: "", into: &members)
        return members.randomElement(using: &random)
    }

    private func collect(
        _ value: FuzzJSON, schema: FuzzSchema?, indices: [Int], label: String,
        into members: inout [(path: [Int], label: String, member: FuzzJSON.Member, field: FuzzSchema.Field?)]
    ) {
        for (index, member) in value.members.enumerated() {
            let field = schema?.fields[member.key]
            let memberLabel = label.isEmpty ? member.key : label + "." + member.key
            members.append((indices + [index], memberLabel, member, field))
            if case .object(let inner)? = field?.kind {
                collect(member.value, schema: inner, indices: indices + [index], label: memberLabel, into: &members)
            }
        }
    }

    private func apply(_ value: FuzzJSON, at path: ArraySlice<Int>, _ edit: Edit) -> FuzzJSON {
        guard case .object(var members) = value, let index = path.first else { return value }
        if path.count > 1 {
            members[index].value = apply(members[index].value, at: path.dropFirst(), edit)
            return .object(members)
        }
        switch edit {
        case .keep: break
        case .remove: members.remove(at: index)
        case .replace(let new): members[index].value = new
        case .insert(let member): members.insert(member, at: index + 1)
        }
        return .object(members)
    }

    /// Any byte but a line break.
    private mutating func randomByte() -> UInt8 {
        while true {
            let byte = UInt8(truncatingIfNeeded: random.next())
            if byte != 0x0A, byte != 0x0D { return byte }
        }
    }

    /// A random well-formed JSON value for unknown members.
    public mutating func randomValue(depth: Int) -> FuzzJSON {
        switch random.next() % (depth > 0 ? 7 : 5) {
        case 0: return .number(String(Int64(bitPattern: random.next()) % 1_000_000))
        case 1: return .string(String(random.next(), radix: 36))
        case 2: return .bool(random.next() % 2 == 0)
        case 3: return .null
        case 4: return .number("-1.5e-3")
        case 5: return .array((0..<Int(random.next() % 4)).map { _ in randomValue(depth: depth - 1) })
        default:
            return .object(
                (0..<Int(random.next() % 4)).map { index in FuzzJSON.Member("k\(index)", randomValue(depth: depth - 1))
                })
        }
    }
}

extension FuzzJSON {
    var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }
}

extension FuzzSchema.Kind {
    var isAny: Bool {
        if case .any = self { return true }
        return false
    }

    var isString: Bool {
        switch self {
        case .identifier, .name, .time, .text: true
        default: false
        }
    }

    /// The well-formed values that name nothing, for `.name` and `.time`.
    var unknownNames: [String] {
        switch self {
        case .name(let unknown), .time(let unknown): unknown
        default: []
        }
    }

    /// Whether a value of that JSON type is of this kind (so replacing with it is no type error).
    func accepts(_ value: FuzzJSON) -> Bool {
        switch (self, value) {
        case (.any, _), (_, .null): true
        case (.identifier, .string), (.name, .string), (.text, .string), (.time, .string), (.time, .number): true
        case (.count, .number), (.wholeNumber, .number), (.decimal, .number), (.decimal, .string): true
        case (.bool, .bool), (.object, .object): true
        default: false
        }
    }

    /// What the receiver must do with a well-formed string in a field of this kind.
    func expectationForString(_ text: String) -> FuzzCase.Expectation {
        switch self {
        case .identifier(let maxBytes): text.utf8.count <= maxBytes ? .accept : .reject
        case .name, .time: .reject
        case .text: .accept
        case .decimal: Double(text) == nil ? .reject : .either
        case .any: .either
        case .count, .wholeNumber, .bool, .object: .reject
        }
    }
}
