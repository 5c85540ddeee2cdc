// libyaml's own module, which Yams is built on: its event parser sees aliases before Yams
// resolves them. Yams exports no event API, and CYaml is its target, not a product: SwiftPM
// lets a package import a dependency's C module; were that to change, this file would move to a
// small target of its own over libyaml (Package.swift says so beside the pin).
import CYaml

/// How large a YAML text becomes once its aliases are expanded, and whether every mapping key is
/// plain text, checked on libyaml's events before anything is built from them.
///
/// Yams shares an aliased node instead of copying it, but hashes every mapping key whole to find
/// duplicates (a key that is a list hashes every element, and a text its bytes), and the sheet's
/// reader walks every value. A sheet of a few hundred bytes whose anchors each repeat the one
/// before ten times (a "billion laughs"), or a few long texts repeated so, cost hours there, and
/// `PUT /api/admin/prices` would pin a thread meanwhile. Anchors stay allowed (sharing one
/// model's prices among its aliases is what they are for); the expanded size is bounded, by
/// bytes, and a key must be text, as every key of a price sheet is.
enum YAMLExpansion {
    /// Bytes a text may count once every alias is replaced by what it names (each value counts
    /// its text and one more): four times the largest sheet the HTTP route reads, far above any
    /// real price sheet (the default one has about 40 KB).
    static let maximumBytes = 16 << 20

    enum Problem: Equatable {
        /// The expansion passed `maximumBytes` here.
        case tooLarge(line: Int, column: Int)
        /// A mapping key that is an alias, a list or a mapping.
        case keyNotText(line: Int, column: Int)

        /// What the sheet's refusal says.
        var message: String {
            switch self {
            case .tooLarge(let line, let column):
                "its aliases expand it past \(YAMLExpansion.maximumBytes >> 20) MiB at line \(line), column \(column); "
                    + "a price sheet needs far less"
            case .keyNotText(let line, let column):
                "a key must be text, not a list, a map or an alias of one (line \(line), column \(column))"
            }
        }
    }

    /// The first problem found, or nil (also when the text is not YAML: Yams then reports why).
    static func problem(in text: String) -> Problem? {
        var text = text
        return text.withUTF8 { bytes in
            var parser = yaml_parser_t()
            guard yaml_parser_initialize(&parser) == 1 else { return nil }
            defer { yaml_parser_delete(&parser) }
            yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
            yaml_parser_set_input_string(&parser, bytes.baseAddress, bytes.count)
            var measure = Measure()
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else { return nil }
                defer { yaml_event_delete(&event) }
                if event.type == YAML_STREAM_END_EVENT { return nil }
                let (line, column) = (Int(event.start_mark.line) + 1, Int(event.start_mark.column) + 1)
                switch measure.take(event) {
                case .fine: continue
                case .tooLarge: return .tooLarge(line: line, column: column)
                case .keyNotText: return .keyNotText(line: line, column: column)
                }
            }
        }
    }

    /// The running count: each open collection's weight so far (and, for a mapping, whether its
    /// next node is a key), each anchor's weight once its node is complete. Weights saturate
    /// just past the limit, so nested aliases cannot overflow.
    private struct Measure {
        enum Verdict { case fine, tooLarge, keyNotText }

        struct Open {
            let anchor: String?
            let isMapping: Bool
            var weight = 1
            var expectingKey = true
        }

        var open: [Open] = []
        var anchors: [String: Int] = [:]
        /// The anchors that name a text (the last node an anchor named counts).
        var textAnchors: Set<String> = []
        var total = 0

        /// Counts one event.
        mutating func take(_ event: yaml_event_t) -> Verdict {
            switch event.type {
            case YAML_SCALAR_EVENT:
                let scalar = event.data.scalar
                let anchor = Self.name(scalar.anchor)
                if let anchor { textAnchors.insert(anchor) }
                return complete(1 + scalar.length, anchor: anchor)
            case YAML_ALIAS_EVENT:
                let anchor = Self.name(event.data.alias.anchor)
                // An alias of a text is a text key; one of a list or a map is not.
                if atKey, !(anchor.map { textAnchors.contains($0) } ?? false) { return .keyNotText }
                // An alias of an unknown anchor is Yams's error to report; it counts as one here.
                return add(anchor.flatMap { anchors[$0] } ?? 1)
            case YAML_SEQUENCE_START_EVENT:
                if atKey { return .keyNotText }
                open.append(Open(anchor: Self.name(event.data.sequence_start.anchor), isMapping: false))
                return .fine
            case YAML_MAPPING_START_EVENT:
                if atKey { return .keyNotText }
                open.append(Open(anchor: Self.name(event.data.mapping_start.anchor), isMapping: true))
                return .fine
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                guard let node = open.popLast() else { return .fine }
                if let anchor = node.anchor { textAnchors.remove(anchor) }
                return complete(node.weight, anchor: node.anchor)
            default:
                return .fine
            }
        }

        /// Whether the next node is a mapping's key.
        private var atKey: Bool { open.last.map { $0.isMapping && $0.expectingKey } ?? false }

        private mutating func complete(_ weight: Int, anchor: String?) -> Verdict {
            if let anchor { anchors[anchor] = weight }
            return add(weight)
        }

        /// Adds a finished node to the collection around it (a mapping then waits for its other
        /// half), or to the total at the top.
        private mutating func add(_ weight: Int) -> Verdict {
            let cap = YAMLExpansion.maximumBytes + 1
            let capped = min(weight, cap)
            guard !open.isEmpty else {
                total = min(total + capped, cap)
                return total < cap ? .fine : .tooLarge
            }
            open[open.count - 1].weight = min(open[open.count - 1].weight + capped, cap)
            if open[open.count - 1].isMapping { open[open.count - 1].expectingKey.toggle() }
            return open[open.count - 1].weight < cap ? .fine : .tooLarge
        }

        private static func name(_ anchor: UnsafeMutablePointer<yaml_char_t>?) -> String? {
            anchor.map { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
        }
    }
}
