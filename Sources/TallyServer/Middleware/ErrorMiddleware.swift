import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import TallyCore
import TallyPostgres
import TallyStore

/// Answers every error — thrown by a route, another middleware or the router itself — in the
/// envelope of its path (`ErrorEnvelope.forPath`), with the request's tid. The one place where
/// errors of the store, the rules, the database and Hummingbird become HTTP answers.
public struct ErrorMiddleware: RouterMiddleware {
    public typealias Context = TallyRequestContext

    public init() {}

    public func handle(
        _ request: Request, context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            let apiError = Self.apiError(for: error, logger: context.logger)
            return Self.response(for: apiError, path: request.uri.path, tid: context.tid)
        }
    }

    /// Maps any error to the error it is answered with. Unknown errors are logged (with the tid)
    /// and answered as `internal_error`, so no SQL or internal detail reaches the caller; an
    /// unavailable database is logged once per 10 s however many requests meet it (`warnings`).
    static func apiError(
        for error: any Error, logger: Logger, warnings: RepeatedWarningLog = .shared
    ) -> APIError {
        switch error {
        case let error as APIError:
            return error
        case let error as CredentialRejected:
            return error.error
        case let error as RuleViolation:
            return .invalidRequest(error.message)
        case is PermissionDenied:
            return APIError(.insufficientPermissions)
        case let error as StoreError:
            switch error {
            case .notFound(let message): return .notFound(message)
            case .conflict(let message): return .conflict(message)
            case .invalid(let message): return .invalidRequest(message)
            case .internalError:
                logger.error("internal error", metadata: ["error": "\(error)"])
                return .internalError()
            }
        case is NIOTooManyBytesError:
            // A body collected with `collect(upTo:)` / `collectBody(upTo:)` was over the route's limit.
            return .payloadTooLarge("The request body is larger than the limit.")
        case let error as PostgresError where error.isConnectionFailure:
            warnings.warning("database unavailable", metadata: ["error": "\(error)"], to: logger)
            return .databaseUnavailable()
        case let error as PostgresError where error.isLostRace:
            // Written again already (ingest batches, leases) and aborted every time in favour of
            // concurrent transactions: nothing was changed, and the caller may retry.
            warnings.warning("aborted by concurrent transactions", metadata: ["error": "\(error)"], to: logger)
            return .databaseUnavailable()
        case let error as PostgresError where error.isMissingPartition:
            // A month retention dropped in another process while this one still took it for
            // kept (until its notice arrives): the resend's lines of that month are refused as
            // month_dropped, the rest stored.
            warnings.warning("a month's request rows were dropped", metadata: ["error": "\(error)"], to: logger)
            return .databaseUnavailable()
        case let error as PostgresError where error.isTemporary:
            warnings.warning("database cannot serve for now", metadata: ["error": "\(error)"], to: logger)
            return .databaseUnavailable()
        case let error as LeaseError:
            // The registration lapsed or was reaped (PostgreSQL was out of reach for too long), or
            // the journal's answer missed a hold: a retry is answered with what was stored.
            warnings.warning("no valid lease registration", metadata: ["error": "\(error)"], to: logger)
            return .databaseUnavailable()
        case let error as HTTPError:
            switch error.status.code {
            case 404: return .notFound()
            case 405: return .methodNotAllowed()
            case 413: return .payloadTooLarge("The request body is larger than the limit.")
            case 400..<500: return .invalidRequest(error.body ?? "Bad request.")
            default:
                logger.error("internal error", metadata: ["error": "\(error)"])
                return .internalError()
            }
        default:
            logger.error("internal error", metadata: ["error": "\(error)"])
            return .internalError()
        }
    }

    static func response(for error: APIError, path: String, tid: String) -> Response {
        let body = ErrorEnvelope.forPath(path).body(for: error, tid: tid)
        return Response(
            status: HTTPResponse.Status(code: error.status),
            headers: [.contentType: "application/json; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: body)))
    }
}
