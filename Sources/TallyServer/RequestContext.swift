import Foundation
import Hummingbird
import NIOCore
import TallyCore
import TallyStore

/// Per-request state: the tid, and the caller once an auth middleware has identified it.
public struct TallyRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The trace id of this request (32 lowercase hex), set by `TraceMiddleware`.
    public var tid: String = ""
    /// The authenticated System API user, set by `UserAuthMiddleware`.
    public var user: User?
    /// The TCP peer (a proxy, when there is one in front).
    public let remoteAddress: SocketAddress?
    /// The client's IP address, set by `ClientAddressMiddleware`; nil when unknown.
    public var clientAddress: String?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    /// Log batches may be 16 MiB (DESIGN §4); the ingest controller enforces the exact limit.
    public var maxUploadSize: Int { 16 * 1024 * 1024 + 1 }

    public var requestDecoder: JSONDecoder { JSONDecoder() }

    public var responseEncoder: JSONEncoder { TallyJSON.encoder }

    /// The authenticated user; routes behind `UserAuthMiddleware` can rely on it.
    public func requireUser() throws -> User {
        guard let user else { throw APIError(.missingToken) }
        return user
    }
}

/// The JSON coder settings of every response.
public enum TallyJSON {
    public static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }
}
