import Foundation
import Hummingbird
import Metrics
import TallyCore
import TallyStore

/// `POST /gateway/v1/authorize` and `POST /gateway/v1/release` (DESIGN §5), behind the gateway
/// secret. Settlement is the log line with the same request id (`POST /gateway/v1/logs`).
struct EnforcementController {
    let authorizer: Authorizer
    let holds: any HoldRepository
    let holdBook: HoldBook

    /// Authorize and release bodies are small; anything larger is refused unread.
    static let maximumBodyBytes = 64 * 1024

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.post("authorize", use: authorize)
        routes.post("release", use: release)
        return routes
    }

    @Sendable func authorize(request: Request, context: TallyRequestContext) async throws -> Response {
        do {
            let started = AuthorizeMetrics.now()
            let body = try await Self.authorizeBody(request)
            AuthorizeMetrics.record(.body, since: started)
            let grant = try await authorizer.authorize(body, tid: context.tid)
            let answering = AuthorizeMetrics.now()
            EnforcementMetrics.authorized(grant)
            defer { AuthorizeMetrics.record(.answer, since: answering) }
            return AuthorizeResponse(grant, tid: context.tid).response()
        } catch let error as APIError {
            EnforcementMetrics.refused(error.code)
            throw error
        } catch {
            EnforcementMetrics.failed.increment()
            throw error
        }
    }

    /// The authorize body: its common shape read straight from the bytes, anything else (and
    /// every error) by JSONDecoder.
    static func authorizeBody(_ request: Request) async throws -> AuthorizeRequest {
        let body = try await SystemInput.bodyBuffer(request, upTo: maximumBodyBytes)
        let common = body.withUnsafeReadableBytes { bytes in
            AuthorizeRequest.parseCommon(bytes.assumingMemoryBound(to: UInt8.self))
        }
        return try common ?? SystemInput.decode(AuthorizeRequest.self, from: Data(buffer: body))
    }

    @Sendable func release(request: Request, context: TallyRequestContext) async throws -> Response {
        struct Body: Decodable {
            let request_id: String
            /// Authorize's `hold_id`: only that hold is returned (a request refused with 409, or
            /// found in conflict after an async answer, would otherwise return the hold of the
            /// request that holds the id, which then runs with nothing reserved).
            let hold_id: Int64?
        }
        let body = try SystemInput.decode(
            Body.self, from: try await SystemInput.body(request, upTo: Self.maximumBodyBytes))
        // A hold answered from memory (async mode) may still be on its way to the journal.
        await holdBook.flush()
        guard let outcome = try await holds.release(requestID: body.request_id, holdID: body.hold_id) else {
            throw APIError.notFound(
                body.hold_id == nil ? "No hold has this request_id." : "No hold has this request_id and hold_id.")
        }
        EnforcementMetrics.released(outcome)
        return try ReleaseResponse(
            requestId: body.request_id, status: outcome.status, held: outcome.held,
            released: outcome.returned, tid: context.tid
        ).response(from: request, context: context)
    }
}

/// `{"hold_id","user_id","token_id","group","held","tid"}`; `duplicate` is true when the request
/// id had been authorized before and this is that hold (nothing more was reserved).
struct AuthorizeResponse {
    let holdId: Int64
    let userId: Int64
    let tokenId: Int64
    let group: String
    let held: Int64
    let duplicate: Bool
    let tid: String

    init(_ grant: AuthorizeGrant, tid: String) {
        holdId = grant.holdID
        userId = grant.userID
        tokenId = grant.tokenID
        group = grant.group
        held = grant.held
        duplicate = !grant.isNew
        self.tid = tid
    }

    /// Written by hand: it is on every authorization's path, where JSONEncoder cost a tenth of
    /// the server's time.
    func response() -> Response {
        let json =
            "{\"hold_id\":\(holdId),\"user_id\":\(userId),\"token_id\":\(tokenId),"
            + "\"group\":\(JSONText.quote(group)),\"held\":\(held),\"duplicate\":\(duplicate),"
            + "\"tid\":\(JSONText.quote(tid))}"
        return Response(
            status: .ok, headers: [.contentType: "application/json; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: json)))
    }
}

/// `status` is the hold's state after the call; `released` the units this call returned
/// (0 for a repeated release or a hold already settled or expired).
struct ReleaseResponse: ResponseEncodable {
    let requestId: String
    let status: String
    let held: Int64
    let released: Int64
    let tid: String
}

enum EnforcementMetrics {
    static let granted = Counter(label: "tally_authorize_total", dimensions: [("result", "held")])
    static let retried = Counter(label: "tally_authorize_total", dimensions: [("result", "duplicate")])
    static let heldUnits = Counter(label: "tally_authorize_held_units_total")
    static let releasedUnits = Counter(label: "tally_release_units_total")

    static func authorized(_ grant: AuthorizeGrant) {
        if grant.isNew {
            granted.increment()
            heldUnits.increment(by: grant.held)
        } else {
            retried.increment()
        }
    }

    /// One counter per refusal code, made once (a refusal made one per request, a registry
    /// lookup under its lock on the path a spent account's clients hammer): the catalog's codes
    /// and `invalid_request`; any other code (a fixed set too) is counted as it comes.
    private static let refusals = Dictionary(
        uniqueKeysWithValues: (CatalogEntry.allCases.map(\.rawValue) + ["invalid_request"]).map {
            ($0, Counter(label: "tally_authorize_total", dimensions: [("result", $0)]))
        })
    /// Answers that are no refusal: the database or a lease out of reach (503), anything unexpected.
    static let failed = Counter(label: "tally_authorize_total", dimensions: [("result", "error")])

    static func refused(_ code: String) {
        (refusals[code] ?? Counter(label: "tally_authorize_total", dimensions: [("result", code)])).increment()
    }

    static func released(_ outcome: ReleaseOutcome) {
        releasedUnits.increment(by: outcome.returned)
    }
}
