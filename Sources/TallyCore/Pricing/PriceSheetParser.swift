import Yams

/// One problem found in a price sheet: where (a dotted path such as `models.gpt-4o.input`) and
/// what.
public struct PriceSheetProblem: Sendable, Equatable, CustomStringConvertible {
    /// The path of the offending value (`groups.vip.ratio`, `models.x.tiers[1]`); empty for the
    /// whole text.
    public let path: String
    /// What is wrong, e.g. `negative price "-1"`.
    public let message: String

    /// Creates a problem.
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    /// `path: message`, or the message alone for the whole text.
    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

/// Why a price sheet was refused: the problems found, in document order (at most
/// `SheetReader.maximumProblems` of them listed).
public struct PriceSheetError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The problems listed, at least one.
    public let problems: [PriceSheetProblem]
    /// Problems found past the listed ones.
    public let unlisted: Int

    /// Creates an error.
    public init(problems: [PriceSheetProblem], unlisted: Int = 0) {
        self.problems = problems
        self.unlisted = unlisted
    }

    /// `invalid price sheet: models.gpt-4o.input: negative price "-1"`, or for several problems
    /// their count followed by one listed problem per line (and how many more there were).
    public var description: String {
        if problems.count == 1, unlisted == 0 { return "invalid price sheet: \(problems[0])" }
        return "invalid price sheet (\(problems.count + unlisted) problems):\n"
            + problems.map { "  \($0)" }.joined(separator: "\n")
            + (unlisted == 0 ? "" : "\n  and \(unlisted) more")
    }
}

extension PriceSheet {
    /// Parses and validates a price sheet written in YAML or JSON (DESIGN §3, rules in
    /// `docs/pricing.md`). Every problem is collected before throwing.
    public static func parse(_ text: String) throws(PriceSheetError) -> PriceSheet {
        let trimmed = text.drop { $0.isWhitespace || $0 == "\u{FEFF}" }
        let looksLikeJSON = trimmed.first == "{"
        if let problem = YAMLExpansion.problem(in: text) {
            throw PriceSheetError(problems: [PriceSheetProblem(path: "", message: problem.message)])
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            let detail = Self.describe(yamlError: error)
            throw PriceSheetError(problems: [
                PriceSheetProblem(
                    path: "", message: looksLikeJSON ? "invalid JSON: \(detail)" : "invalid YAML: \(detail)")
            ])
        }
        guard let root else {
            throw PriceSheetError(problems: [PriceSheetProblem(path: "", message: "the price sheet is empty")])
        }
        var reader = SheetReader()
        let sheet = reader.readSheet(root)
        if let sheet, reader.problems.isEmpty { return sheet }
        throw PriceSheetError(problems: reader.problems, unlisted: reader.unlisted)
    }

    static func describe(yamlError error: any Error) -> String {
        guard let yamlError = error as? YamlError else { return String(describing: error) }
        switch yamlError {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            let contextText = context.map { "\($0.text) " } ?? ""
            return "\(contextText)\(problem) at line \(mark.line), column \(mark.column)"
        case .reader(let problem, let offset, _, _):
            return "\(problem)" + (offset.map { " at byte \($0)" } ?? "")
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.sorted().map { PriceText.quoted($0) }.joined(separator: ", ")
            return "duplicate key \(keys) at line \(context.mark.line), column \(context.mark.column)"
        default:
            return String(describing: yamlError)
        }
    }
}

/// Field names the sheet accepts, by place.
enum SheetFields {
    static let topLevel: Set<String> = ["effective_from", "groups", "models"]
    static let group: Set<String> = ["ratio", "description", "models"]
    static let tokenPrices = ["input", "output", "cached_input", "cache_write", "audio_input", "audio_output"]
    static let otherPrices = ["per_image", "per_video_second", "per_call", "per_compute_second", "charge_failed"]
    static let limits = [
        "max_prompt_chars", "max_input_chars", "max_n", "sizes", "default_max_tokens", "default_seconds",
    ]
    static let tier: Set<String> = Set(["above_prompt_tokens"] + tokenPrices)
    static let groupPrice: Set<String> = Set(tokenPrices + otherPrices)
    static let model: Set<String> = Set(
        tokenPrices + otherPrices + limits
            + ["tiers", "group_prices", "kind", "endpoint_types"])
    static let noPriceHint =
        "no price (give at least one of input, output, cached_input, cache_write, "
        + "audio_input, audio_output, per_image, per_video_second, per_call, per_compute_second)"
}

/// Walks a composed YAML tree, building the sheet and collecting problems.
struct SheetReader {
    var problems: [PriceSheetProblem] = []
    /// (path, group) pairs from `group_prices`, checked once all groups are known.
    var groupReferences: [(String, String)] = []
    /// (path, model) pairs from groups' `models:` lists, checked once all models are known.
    var modelReferences: [(String, String)] = []
    /// Groups and models whose own entry had a problem: references to them are not reported
    /// again (kept as sets: a search of the problems for each reference was quadratic, and a
    /// 4 MiB sheet of unknown references held a thread for hours, found by a review).
    var brokenGroups: Set<String> = [], brokenModels: Set<String> = []

    /// Problems listed at most; the rest are only counted.
    static let maximumProblems = 100
    private(set) var unlisted = 0

    mutating func problem(_ path: String, _ message: String) {
        guard problems.count < Self.maximumProblems else {
            unlisted += 1
            return
        }
        problems.append(PriceSheetProblem(path: path, message: message))
    }

    static func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    static func isNull(_ node: Node) -> Bool {
        guard case .scalar(let scalar) = node, scalar.style == .plain || scalar.style == .any else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    static func typeName(_ node: Node) -> String {
        switch node {
        case .scalar: "a scalar"
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        }
    }

    /// The pairs of a mapping with string keys, in document order; reports duplicates and
    /// non-scalar keys.
    mutating func pairs(_ node: Node, _ path: String) -> [(String, Node)]? {
        guard case .mapping(let mapping) = node else {
            problem(path, "expected a mapping, got \(Self.typeName(node))")
            return nil
        }
        var result: [(String, Node)] = []
        var seen: Set<String> = []
        for (keyNode, value) in mapping {
            guard case .scalar(let key) = keyNode else {
                problem(path, "a key must be a string, got \(Self.typeName(keyNode))")
                continue
            }
            guard seen.insert(key.string).inserted else {
                problem(Self.join(path, key.string), "duplicate key")
                continue
            }
            result.append((key.string, value))
        }
        return result
    }

    mutating func checkFields(_ pairs: [(String, Node)], allowed: Set<String>, _ path: String) {
        for (key, _) in pairs where !allowed.contains(key) {
            problem(Self.join(path, key), "unknown field")
        }
    }

    mutating func string(_ node: Node, _ path: String) -> String? {
        guard case .scalar(let scalar) = node else {
            problem(path, "expected a string, got \(Self.typeName(node))")
            return nil
        }
        return scalar.string
    }

    mutating func stringList(_ node: Node, _ path: String) -> [String]? {
        guard case .sequence(let sequence) = node else {
            problem(path, "expected a list of strings, got \(Self.typeName(node))")
            return nil
        }
        var result: [String] = []
        for (index, item) in sequence.enumerated() {
            if let text = string(item, "\(path)[\(index)]") {
                if text.isEmpty { problem("\(path)[\(index)]", "empty string") } else { result.append(text) }
            }
        }
        return result
    }

    /// A non-negative USD price.
    mutating func price(_ node: Node, _ path: String) -> ExactDecimal? {
        guard case .scalar(let scalar) = node else {
            problem(path, "expected a price such as \"2.50\", got \(Self.typeName(node))")
            return nil
        }
        let value: ExactDecimal
        do {
            value = try ExactDecimal(scalar.string)
        } catch {
            problem(path, error.description)
            return nil
        }
        if value.isNegative {
            problem(path, "negative price \(PriceText.quoted(scalar.string))")
            return nil
        }
        return value
    }

    /// A whole number ≥ `minimum`.
    mutating func integer(_ node: Node, _ path: String, minimum: Int64) -> Int64? {
        guard case .scalar(let scalar) = node else {
            problem(path, "expected a whole number, got \(Self.typeName(node))")
            return nil
        }
        let text = scalar.string
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 || $0 == 45 }), let value = Int64(text) else {
            problem(path, "expected a whole number, got \(PriceText.quoted(text))")
            return nil
        }
        guard value >= minimum else {
            problem(
                path, minimum == 0 ? "must not be negative, got \(value)" : "must be at least \(minimum), got \(value)")
            return nil
        }
        return value
    }

    /// A `key: price` map (per_image, per_video_second).
    mutating func priceMap(_ node: Node, _ path: String) -> [String: ExactDecimal]? {
        guard let pairs = pairs(node, path) else { return nil }
        if pairs.isEmpty {
            problem(path, "empty (give at least one price, e.g. default: \"0.04\")")
            return nil
        }
        var result: [String: ExactDecimal] = [:]
        for (key, value) in pairs {
            if key.isEmpty {
                problem(path, "empty key")
                continue
            }
            if let price = price(value, Self.join(path, key)) { result[key] = price }
        }
        return result
    }

    mutating func tokenPrices(_ pairs: [(String, Node)], _ path: String) -> TokenPrices {
        var prices = TokenPrices()
        for (key, value) in pairs {
            let fieldPath = Self.join(path, key)
            switch key {
            case "input": prices.input = price(value, fieldPath)
            case "output": prices.output = price(value, fieldPath)
            case "cached_input": prices.cachedInput = price(value, fieldPath)
            case "cache_write": prices.cacheWrite = price(value, fieldPath)
            case "audio_input": prices.audioInput = price(value, fieldPath)
            case "audio_output": prices.audioOutput = price(value, fieldPath)
            default: break
            }
        }
        return prices
    }

    mutating func priceFields(_ pairs: [(String, Node)], _ path: String) -> PriceFields {
        var fields = PriceFields(tokens: tokenPrices(pairs, path))
        for (key, value) in pairs {
            let fieldPath = Self.join(path, key)
            switch key {
            case "per_image": fields.perImage = priceMap(value, fieldPath)
            case "per_video_second": fields.perVideoSecond = priceMap(value, fieldPath)
            case "per_call": fields.perCall = price(value, fieldPath)
            case "per_compute_second": fields.perComputeSecond = price(value, fieldPath)
            case "charge_failed": fields.chargeFailed = price(value, fieldPath)
            default: break
            }
        }
        return fields
    }

    mutating func readSheet(_ root: Node) -> PriceSheet? {
        guard let top = pairs(root, "") else { return nil }
        checkFields(top, allowed: SheetFields.topLevel, "")
        var effectiveFrom: RFC3339Time?
        var groups: [String: PriceGroup] = [:]
        var models: [String: ModelPrice] = [:]
        var sawGroups = false
        var sawModels = false
        for (key, value) in top {
            switch key {
            case "effective_from":
                if Self.isNull(value) { break }
                if let text = string(value, key) {
                    effectiveFrom = RFC3339Time(text)
                    if effectiveFrom == nil {
                        problem(
                            key, "invalid RFC 3339 time \(PriceText.quoted(text)) (expected e.g. 2026-11-01T00:00:00Z)")
                    }
                }
            case "groups":
                sawGroups = true
                guard let entries = pairs(value, key) else { break }
                if entries.isEmpty { problem(key, "at least one group is required") }
                for (name, node) in entries {
                    let before = problems.count + unlisted
                    if let group = readGroup(node, Self.join(key, name)) { groups[name] = group }
                    if problems.count + unlisted > before { brokenGroups.insert(name) }
                }
            case "models":
                sawModels = true
                guard let entries = pairs(value, key) else { break }
                if entries.isEmpty { problem(key, "at least one model is required") }
                for (name, node) in entries {
                    let before = problems.count + unlisted
                    if let model = readModel(node, Self.join(key, name)) { models[name] = model }
                    if problems.count + unlisted > before { brokenModels.insert(name) }
                }
            default: break
            }
        }
        if !sawGroups { problem("groups", "missing (give at least one group, e.g. default: {ratio: \"1\"})") }
        if !sawModels { problem("models", "missing (give at least one model)") }
        // A group or model whose own entry is broken is reported there, not again here.
        for (path, model) in modelReferences where models[model] == nil && !brokenModels.contains(model) {
            problem(path, "unknown model \(PriceText.quoted(model))")
        }
        for (path, group) in groupReferences where groups[group] == nil && !brokenGroups.contains(group) {
            problem(path, "unknown group \(PriceText.quoted(group))")
        }
        return PriceSheet(effectiveFromTime: effectiveFrom, groups: groups, models: models)
    }

    mutating func readGroup(_ node: Node, _ path: String) -> PriceGroup? {
        guard let fields = pairs(node, path) else { return nil }
        checkFields(fields, allowed: SheetFields.group, path)
        var ratio: ExactDecimal?
        var description: String?
        var models: [String]?
        var ok = true
        for (key, value) in fields {
            let fieldPath = Self.join(path, key)
            switch key {
            case "ratio":
                guard case .scalar(let scalar) = value else {
                    problem(fieldPath, "expected a ratio such as \"0.8\", got \(Self.typeName(value))")
                    ok = false
                    break
                }
                do {
                    let parsed = try ExactDecimal(scalar.string)
                    if parsed <= .zero {
                        problem(fieldPath, "ratio must be greater than 0, got \(PriceText.quoted(scalar.string))")
                        ok = false
                    } else {
                        ratio = parsed
                    }
                } catch {
                    problem(fieldPath, error.description)
                    ok = false
                }
            case "description":
                if !Self.isNull(value) { description = string(value, fieldPath) }
            case "models":
                if Self.isNull(value) { break }
                models = stringList(value, fieldPath)
                for (index, model) in (models ?? []).enumerated() {
                    modelReferences.append(("\(fieldPath)[\(index)]", model))
                }
            default: break
            }
        }
        if ratio == nil, ok, !fields.contains(where: { $0.0 == "ratio" }) {
            problem(Self.join(path, "ratio"), "missing (e.g. ratio: \"1\")")
        }
        guard let ratio else { return nil }
        return PriceGroup(ratio: ratio, description: description, models: models)
    }

    mutating func readModel(_ node: Node, _ path: String) -> ModelPrice? {
        guard let fields = pairs(node, path) else { return nil }
        checkFields(fields, allowed: SheetFields.model, path)
        let prices = priceFields(fields, path)
        var tiers: [PriceTier] = []
        var groupPrices: [String: PriceFields] = [:]
        var limits = ModelLimits()
        var kind: RequestKind?
        var endpointTypes: [String]?
        for (key, value) in fields {
            let fieldPath = Self.join(path, key)
            switch key {
            case "tiers":
                tiers = readTiers(value, fieldPath)
            case "group_prices":
                guard let entries = pairs(value, fieldPath) else { break }
                for (group, entry) in entries {
                    let entryPath = Self.join(fieldPath, group)
                    groupReferences.append((entryPath, group))
                    guard let entryFields = pairs(entry, entryPath) else { continue }
                    checkFields(entryFields, allowed: SheetFields.groupPrice, entryPath)
                    let override = priceFields(entryFields, entryPath)
                    if !override.hasPrice && override.chargeFailed == nil {
                        if entryFields.allSatisfy({ SheetFields.groupPrice.contains($0.0) }) {
                            problem(entryPath, SheetFields.noPriceHint)
                        }
                    } else {
                        groupPrices[group] = override
                    }
                }
            case "max_prompt_chars": limits.maxPromptChars = integer(value, fieldPath, minimum: 1)
            case "max_input_chars": limits.maxInputChars = integer(value, fieldPath, minimum: 1)
            case "max_n": limits.maxN = integer(value, fieldPath, minimum: 1)
            case "default_max_tokens": limits.defaultMaxTokens = integer(value, fieldPath, minimum: 1)
            case "default_seconds": limits.defaultSeconds = integer(value, fieldPath, minimum: 1)
            case "sizes":
                limits.sizes = stringList(value, fieldPath)
                if limits.sizes?.isEmpty == true {
                    problem(fieldPath, "empty list (leave it out to allow every size)")
                }
            case "kind":
                guard let text = string(value, fieldPath) else { break }
                kind = RequestKind(rawValue: text)
                if kind == nil {
                    let names = RequestKind.allCases.map(\.rawValue).joined(separator: ", ")
                    problem(fieldPath, "unknown kind \(PriceText.quoted(text)) (one of \(names))")
                }
            case "endpoint_types":
                endpointTypes = stringList(value, fieldPath)
            default: break
            }
        }
        if !prices.hasPrice {
            // Only complain when no price field was written at all (a bad price is reported
            // where it is).
            let wrotePrice = fields.contains {
                SheetFields.tokenPrices.contains($0.0)
                    || ["per_image", "per_video_second", "per_call", "per_compute_second"].contains($0.0)
            }
            if !wrotePrice { problem(path, SheetFields.noPriceHint) }
        }
        return ModelPrice(
            prices: prices, tiers: tiers, groupPrices: groupPrices, limits: limits, kind: kind,
            endpointTypes: endpointTypes)
    }

    mutating func readTiers(_ node: Node, _ path: String) -> [PriceTier] {
        guard case .sequence(let sequence) = node else {
            problem(path, "expected a list of tiers, got \(Self.typeName(node))")
            return []
        }
        var tiers: [PriceTier] = []
        var previous: Int64?
        for (index, item) in sequence.enumerated() {
            let tierPath = "\(path)[\(index)]"
            guard let fields = pairs(item, tierPath) else { continue }
            checkFields(fields, allowed: SheetFields.tier, tierPath)
            let prices = tokenPrices(fields, tierPath)
            let thresholdPath = Self.join(tierPath, "above_prompt_tokens")
            guard let thresholdNode = fields.first(where: { $0.0 == "above_prompt_tokens" })?.1 else {
                problem(thresholdPath, "missing (e.g. above_prompt_tokens: 200000)")
                continue
            }
            guard let threshold = integer(thresholdNode, thresholdPath, minimum: 0) else { continue }
            if let previous, threshold <= previous {
                problem(
                    thresholdPath,
                    "\(threshold) must be greater than the previous tier's \(previous) (tiers go in increasing order)")
            }
            previous = max(previous ?? threshold, threshold)
            if prices.isEmpty {
                if !fields.contains(where: { SheetFields.tokenPrices.contains($0.0) }) {
                    problem(
                        tierPath,
                        "no price (give at least one of input, output, cached_input, cache_write, audio_input, audio_output)"
                    )
                }
                continue
            }
            tiers.append(PriceTier(abovePromptTokens: threshold, prices: prices))
        }
        return tiers
    }
}
