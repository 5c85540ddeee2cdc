/// Every model's effective prices per group, for `GET /api/pricing` and `tally quote`.
///
/// For each group a model is available in, each priced field's effective USD price: the base
/// (or tier) price × the group ratio, exactly, or the group's own price from `group_prices`
/// (no ratio). Field names are the sheet's: `input`, `output`, `cached_input`, `cache_write`,
/// `audio_input`, `audio_output`, `per_image.<key>`, `per_video_second.<key>`, `per_call`,
/// `per_compute_second`, `charge_failed`, and for tiers `tiers.above_<N>.<token field>`.
/// Groups and models are sorted by name.
public struct PricingTable: Codable, Sendable, Equatable {
    /// A group row.
    public struct Group: Codable, Sendable, Equatable {
        /// The group name.
        public let name: String
        /// The ratio, as decimal text.
        public let ratio: String
        /// The description ("" when the sheet has none).
        public let description: String
        /// The only models the group may use, when restricted.
        public let models: [String]?
    }

    /// A model row.
    public struct Model: Codable, Sendable, Equatable {
        /// The model name.
        public let model: String
        /// The kind, when the sheet says.
        public let kind: RequestKind?
        /// Endpoint types ([] when the sheet says none).
        public let endpointTypes: [String]
        /// group → field → USD text.
        public let prices: [String: [String: String]]

        enum CodingKeys: String, CodingKey {
            case model, kind, prices
            case endpointTypes = "endpoint_types"
        }
    }

    /// Groups by name.
    public let groups: [Group]
    /// Models by name.
    public let models: [Model]

    /// Builds the table of a sheet.
    public init(sheet: PriceSheet) {
        groups = sheet.groupNames.map { name in
            let group = sheet.groups[name]!
            return Group(
                name: name, ratio: group.ratio.description, description: group.description ?? "",
                models: group.models)
        }
        models = sheet.modelNames.map { name in
            let model = sheet.models[name]!
            var prices: [String: [String: String]] = [:]
            for groupName in sheet.groupNames {
                let group = sheet.groups[groupName]!
                guard group.allows(name) else { continue }
                prices[groupName] = Self.effectivePrices(model: model, group: groupName, ratio: group.ratio)
            }
            return Model(model: name, kind: model.kind, endpointTypes: model.endpointTypes ?? [], prices: prices)
        }
    }

    static func effectivePrices(model: ModelPrice, group: String, ratio: ExactDecimal) -> [String: String] {
        var fields = model.prices
        var tiers = model.tiers.map { ($0.abovePromptTokens, $0.prices) }
        var appliedRatio = ratio
        if let override = model.groupPrices[group] {
            fields = fields.overridden(by: override)
            tiers = tiers.map { ($0.0, $0.1.overridden(by: override.tokens)) }
            appliedRatio = .one
        }
        var result: [String: String] = [:]
        for (name, price) in fields.namedFields { result[name] = Self.times(price, appliedRatio) }
        for (threshold, prices) in tiers {
            for (name, price) in prices.namedFields {
                result["tiers.above_\(threshold).\(name)"] = Self.times(price, appliedRatio)
            }
        }
        return result
    }

    /// The exact decimal text of `price × ratio`.
    static func times(_ price: ExactDecimal, _ ratio: ExactDecimal) -> String {
        UInt256.product(price.magnitudeE12, ratio.magnitudeE12).decimalText(scale: 24)
    }

    /// The effective prices of one model in one group (field → USD text), or nil when the model
    /// is not available in the group.
    public func prices(model: String, group: String) -> [String: String]? {
        models.first { $0.model == model }?.prices[group]
    }
}
