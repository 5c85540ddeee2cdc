import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import TallyCore

/// Finds the client's IP address once per request, for the failed-auth limit and API keys'
/// IP allow-lists: the TCP peer, or — when the peer is one of `trustedProxies` — the rightmost
/// address of `X-Forwarded-For` that is not itself a trusted proxy.
public struct ClientAddressMiddleware: RouterMiddleware {
    public typealias Context = TallyRequestContext
    let trustedProxies: IPAllowList

    public init(trustedProxies: IPAllowList) { self.trustedProxies = trustedProxies }

    public func handle(
        _ request: Request, context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        var context = context
        context.clientAddress = clientAddress(request, peer: context.remoteAddress?.ipAddress)
        return try await next(request, context)
    }

    /// The client's IP address as text; nil when the peer is unknown.
    func clientAddress(_ request: Request, peer: String?) -> String? {
        guard let peer else { return nil }
        guard !trustedProxies.isEmpty, trustedProxies.allows(peer),
            let forwarded = request.headers[.xForwardedFor]
        else { return peer }
        let hops = forwarded.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        for hop in hops.reversed() where !trustedProxies.allows(hop) {
            return IPAddress.parse(hop) != nil ? hop : peer
        }
        return hops.first ?? peer
    }
}

extension HTTPField.Name {
    static let xForwardedFor = HTTPField.Name("X-Forwarded-For")!
}
