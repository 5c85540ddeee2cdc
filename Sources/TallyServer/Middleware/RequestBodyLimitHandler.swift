import NIOCore
import NIOHTTPTypes

/// Closes a connection whose request body grows past `maxBytes`. Each route reads at most its
/// own limit and answers 413, but the server then discards the rest of the body to reach the
/// next request; this bounds that discarding, whatever the route (even one that reads no body).
final class RequestBodyLimitHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    private let maxBytes: Int
    private var received = 0

    init(maxBytes: Int) { self.maxBytes = maxBytes }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: received = 0
        case .body(let buffer):
            received += buffer.readableBytes
            guard received <= maxBytes else {
                context.close(promise: nil)
                return
            }
        case .end: break
        }
        context.fireChannelRead(data)
    }
}
