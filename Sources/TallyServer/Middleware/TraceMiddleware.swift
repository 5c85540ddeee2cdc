import HTTPTypes
import Hummingbird
import TallyCore

extension HTTPField.Name {
    static let xTid = HTTPField.Name("X-Tid")!
    static let traceparent = HTTPField.Name("traceparent")!
    static let newAPIUser = HTTPField.Name("New-Api-User")!
}

/// Outermost middleware: gives every request its tid (from `traceparent` or `X-Tid`, else a new
/// one), puts it in the log metadata and the `X-Tid` response header (error answers included:
/// `ErrorMiddleware` runs inside it).
public struct TraceMiddleware: RouterMiddleware {
    public typealias Context = TallyRequestContext

    public init() {}

    public func handle(
        _ request: Request, context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let tid = TraceID.resolve(traceparent: request.headers[.traceparent], xTid: request.headers[.xTid])
        var context = context
        context.tid = tid
        context.logger[metadataKey: "tid"] = .string(tid)
        var response = try await next(request, context)
        response.headers[.xTid] = tid
        return response
    }
}
