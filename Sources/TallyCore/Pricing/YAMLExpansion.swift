// libyaml's own module, which Yams is built on: its event parser sees aliases before Yams
// resolves them (Yams exports no event API).
import CYaml

/// How large a YAML text becomes once its aliases are expanded, measured on libyaml's events
/// before anything is built from them.
///
/// Yams shares an aliased node instead of copying it, but hashes every mapping key whole to find
/// duplicates, and the sheet's reader walks every value: a sheet of a few hundred bytes whose
/// anchors each repeat the one before ten times (a "billion laughs") costs 10¹³ steps there, and
/// `PUT /api/admin/prices` would pin a thread for hours. Anchors stay allowed (sharing one
/// model's prices among its aliases is what they are for); only the expanded size is bounded.
enum YAMLExpansion {
    /// Nodes (scalars, sequences, mappings) a text may count once every alias is replaced by
    /// what it names: far above any real price sheet (the default one has about 1,500).
    static let maximumNodes = 1_000_000

    /// Where the expansion passed `maximumNodes`, or nil when it stays within it (or the text
    /// is not YAML: Yams then reports why).
    static func exceedingLimit(_ text: String) -> (line: Int, column: Int)? {
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
                if !measure.take(event) {
                    return (Int(event.start_mark.line) + 1, Int(event.start_mark.column) + 1)
                }
            }
        }
    }

    /// The running count: each open collection's size so far, each anchor's size once its node
    /// is complete. Sizes saturate just past the limit, so ten nested aliases cannot overflow.
    private struct Measure {
        var open: [(anchor: String?, nodes: Int)] = []
        var anchors: [String: Int] = [:]
        var total = 0

        /// Counts one event; false once the whole text has passed the limit.
        mutating func take(_ event: yaml_event_t) -> Bool {
            switch event.type {
            case YAML_SCALAR_EVENT:
                return complete(1, anchor: Self.name(event.data.scalar.anchor))
            case YAML_ALIAS_EVENT:
                // An alias of an unknown anchor is Yams's error to report; it counts as one here.
                let aliased = Self.name(event.data.alias.anchor).flatMap { anchors[$0] } ?? 1
                return add(aliased)
            case YAML_SEQUENCE_START_EVENT:
                open.append((Self.name(event.data.sequence_start.anchor), 1))
                return true
            case YAML_MAPPING_START_EVENT:
                open.append((Self.name(event.data.mapping_start.anchor), 1))
                return true
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                guard let node = open.popLast() else { return true }
                return complete(node.nodes, anchor: node.anchor)
            default:
                return true
            }
        }

        private mutating func complete(_ nodes: Int, anchor: String?) -> Bool {
            if let anchor { anchors[anchor] = nodes }
            return add(nodes)
        }

        /// Adds a finished node to the collection around it, or to the total at the top.
        private mutating func add(_ nodes: Int) -> Bool {
            let capped = min(nodes, YAMLExpansion.maximumNodes + 1)
            if open.isEmpty {
                total = min(total + capped, YAMLExpansion.maximumNodes + 1)
            } else {
                open[open.count - 1].nodes = min(open[open.count - 1].nodes + capped, YAMLExpansion.maximumNodes + 1)
            }
            return total <= YAMLExpansion.maximumNodes && (open.last?.nodes ?? 0) <= YAMLExpansion.maximumNodes
        }

        private static func name(_ anchor: UnsafeMutablePointer<yaml_char_t>?) -> String? {
            anchor.map { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
        }
    }
}
