extension PriceSheet {
    /// The sheet as compact JSON with keys sorted (by UTF-8 bytes), prices as decimal strings
    /// (`"2.5"`), counts and limits as numbers, `effective_from` in UTC (`…Z`), absent fields
    /// left out. ``parse(_:)`` reads it back to an equal sheet; equal sheets print the same
    /// text. Used to store price versions (PostgreSQL `jsonb`).
    public func canonicalJSON() -> String {
        var object = CanonicalObject()
        if let effectiveFromTime { object["effective_from"] = CanonicalJSON.string(effectiveFromTime.text) }
        var groupsObject = CanonicalObject()
        for (name, group) in groups {
            var entry = CanonicalObject()
            entry["ratio"] = CanonicalJSON.string(group.ratio.description)
            if let description = group.description { entry["description"] = CanonicalJSON.string(description) }
            if let models = group.models { entry["models"] = CanonicalJSON.stringArray(models) }
            groupsObject[name] = entry.text
        }
        object["groups"] = groupsObject.text
        var modelsObject = CanonicalObject()
        for (name, model) in models { modelsObject[name] = Self.canonical(model) }
        object["models"] = modelsObject.text
        return object.text
    }

    static func canonical(_ model: ModelPrice) -> String {
        var entry = canonicalFields(model.prices)
        if !model.tiers.isEmpty {
            let tiers = model.tiers.map { tier in
                var tierObject = canonicalTokens(tier.prices)
                tierObject["above_prompt_tokens"] = String(tier.abovePromptTokens)
                return tierObject.text
            }
            entry["tiers"] = "[" + tiers.joined(separator: ",") + "]"
        }
        if !model.groupPrices.isEmpty {
            var groupPrices = CanonicalObject()
            for (group, fields) in model.groupPrices { groupPrices[group] = canonicalFields(fields).text }
            entry["group_prices"] = groupPrices.text
        }
        let limits = model.limits
        if let value = limits.maxPromptChars { entry["max_prompt_chars"] = String(value) }
        if let value = limits.maxInputChars { entry["max_input_chars"] = String(value) }
        if let value = limits.maxN { entry["max_n"] = String(value) }
        if let value = limits.defaultMaxTokens { entry["default_max_tokens"] = String(value) }
        if let value = limits.defaultSeconds { entry["default_seconds"] = String(value) }
        if let sizes = limits.sizes { entry["sizes"] = CanonicalJSON.stringArray(sizes) }
        if let kind = model.kind { entry["kind"] = CanonicalJSON.string(kind.rawValue) }
        if let endpointTypes = model.endpointTypes {
            entry["endpoint_types"] = CanonicalJSON.stringArray(endpointTypes)
        }
        return entry.text
    }

    static func canonicalTokens(_ prices: TokenPrices) -> CanonicalObject {
        var object = CanonicalObject()
        for (name, price) in prices.namedFields { object[name] = CanonicalJSON.string(price.description) }
        return object
    }

    static func canonicalFields(_ fields: PriceFields) -> CanonicalObject {
        var object = canonicalTokens(fields.tokens)
        func map(_ table: [String: ExactDecimal]) -> String {
            var mapObject = CanonicalObject()
            for (key, price) in table { mapObject[key] = CanonicalJSON.string(price.description) }
            return mapObject.text
        }
        if let perImage = fields.perImage { object["per_image"] = map(perImage) }
        if let perVideoSecond = fields.perVideoSecond { object["per_video_second"] = map(perVideoSecond) }
        if let perCall = fields.perCall { object["per_call"] = CanonicalJSON.string(perCall.description) }
        if let value = fields.perComputeSecond {
            object["per_compute_second"] = CanonicalJSON.string(value.description)
        }
        if let value = fields.chargeFailed { object["charge_failed"] = CanonicalJSON.string(value.description) }
        return object
    }
}

/// A JSON object under construction: key → already-encoded value; printed with sorted keys.
struct CanonicalObject {
    var members: [String: String] = [:]

    subscript(key: String) -> String? {
        get { members[key] }
        set { members[key] = newValue }
    }

    var text: String {
        let keys = members.keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        return "{" + keys.map { CanonicalJSON.string($0) + ":" + members[$0]! }.joined(separator: ",") + "}"
    }
}

/// JSON text helpers for canonical output.
enum CanonicalJSON {
    /// A JSON string literal (the shared quoting of `JSONText`).
    static func string(_ text: String) -> String { JSONText.quote(text) }

    static func stringArray(_ items: [String]) -> String {
        "[" + items.map(string).joined(separator: ",") + "]"
    }
}
