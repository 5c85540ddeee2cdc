import Foundation
import TallyCore
import TallyStore

/// A model a group may use, with what `/v1/models` says about it.
struct AvailableModel: Sendable, Equatable {
    var id: String
    var ownedBy: String
    var endpointTypes: [String]
}

/// Which models a group may use: those offered to it by an enabled channel **and** priced for
/// it by the price version in force now (`PriceSheet.isAvailable`: the model has a price and the
/// group's `models:` list, if any, names it). Without a price version no model is usable, as
/// `authorize` refuses unpriced models.
struct ModelAvailability: Sendable {
    let channels: ChannelRepository
    let prices: PriceCatalog

    func models(group: String, at time: Date = Date()) async throws -> [AvailableModel] {
        guard let sheet = prices.book.version(at: time)?.sheet else { return [] }
        return try await channels.models(forGroups: [group])
            .filter { sheet.isAvailable(model: $0, group: group) }
            .map { name in
                AvailableModel(
                    id: name, ownedBy: ModelNames.inferredOwner(name),
                    endpointTypes: Self.endpointTypes(name, sheet.models[name]))
            }
    }

    /// The sheet's `endpoint_types` when it gives them, else from the sheet's `kind`, else from
    /// the model's name.
    static func endpointTypes(_ name: String, _ price: ModelPrice?) -> [String] {
        if let types = price?.endpointTypes { return types }
        switch price?.kind {
        case .embedding?: return ["embeddings"]
        case .rerank?: return ["jina-rerank"]
        case .image?: return ["image-generation"]
        case .video?: return ["openai-video"]
        default: return ModelNames.inferredEndpointTypes(name)
        }
    }
}
