import Foundation
import Hummingbird
import Metrics
import TallyCore
import TallyStore

/// `POST /gateway/v1/logs`: a batch of request logs (NDJSON or a JSON array, ≤ 50,000 lines,
/// ≤ 16 MiB), answered only after the batch is committed.
struct IngestController {
    let ingestor: Ingestor
    let limits: IngestLimits

    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.post("logs", use: ingest)
        return routes
    }

    @Sendable func ingest(request: Request, context: TallyRequestContext) async throws -> Response {
        let format: IngestFormat
        switch request.uri.queryParameters.get("format") ?? "gateway" {
        case "gateway", "tally": format = .gateway
        case "litellm": format = .litellm
        case let other: throw APIError.invalidRequest("unknown format \"\(other.prefix(40))\"; use gateway or litellm")
        }
        // A compressed body would be read as lines of garbage, each rejected, and answered 200.
        if let encoding = request.headers[.contentEncoding], encoding.lowercased() != "identity" {
            throw APIError.unsupportedMediaType(
                "Content-Encoding \"\(encoding.prefix(40))\" is not supported; send the batch uncompressed.")
        }
        let started = ContinuousClock.now
        let result: IngestResult
        do {
            // Each chunk is split, parsed and priced as it arrives, and its lines go on to the
            // batch's transaction while the rest comes; no copy of the body is kept.
            result = try await ingestor.ingest(
                format: format, tid: context.tid, source: format == .gateway ? "http" : "litellm"
            ) { reader in
                for try await chunk in request.body {
                    try chunk.withUnsafeReadableBytes { try reader.feed($0) }
                    try await reader.advance()
                }
            }
        } catch is BatchGate.Busy {
            // As many batches are being read and stored as the pool and memory allow, and this
            // one waited its turn long enough: nothing of it was read; the gateway resends it.
            throw APIError.databaseUnavailable()
        } catch let error as BatchTooLarge {
            throw APIError.payloadTooLarge(error.description)
        } catch let error as BatchMalformed {
            throw APIError.invalidRequest(error.description)
        }
        IngestMetrics.record(result, elapsed: ContinuousClock.now - started)
        let response = IngestResponse(
            accepted: result.accepted, duplicates: result.duplicates,
            rejected: result.rejected.map(IngestResponse.Reject.init), tid: context.tid)
        return try response.response(from: request, context: context)
    }
}

/// The body of an ingest answer.
struct IngestResponse: ResponseEncodable {
    struct Reject: Encodable {
        let line: Int
        let requestId: String?
        let code: String
        let message: String

        init(_ rejected: RejectedLine) {
            line = rejected.line
            requestId = rejected.requestID
            code = rejected.code
            message = rejected.message
        }

        enum CodingKeys: String, CodingKey { case line, requestId, code, message }

        /// `request_id` always (DESIGN §4), null for a line whose id could not be read.
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(line, forKey: .line)
            try container.encode(requestId, forKey: .requestId)
            try container.encode(code, forKey: .code)
            try container.encode(message, forKey: .message)
        }
    }

    let accepted: Int
    let duplicates: Int
    let rejected: [Reject]
    let tid: String
}

enum IngestMetrics {
    static let batches = Counter(label: "tally_ingest_batches_total")
    static let accepted = Counter(label: "tally_ingest_lines_total", dimensions: [("result", "accepted")])
    static let duplicates = Counter(label: "tally_ingest_lines_total", dimensions: [("result", "duplicate")])
    static let rejected = Counter(label: "tally_ingest_lines_total", dimensions: [("result", "rejected")])
    static let charged = Counter(label: "tally_ingest_charged_units_total")
    static let duration = Metrics.Timer(label: "tally_ingest_batch_duration_seconds")
    static let providerRateLimited = Counter(label: "tally_provider_rate_limited_total")
    /// Unix time of this instance's last committed batch: `time() - …` is the ingest lag the
    /// alerts watch (a gateway that stopped sending, or batches that stopped committing).
    static let lastBatch = Gauge(label: "tally_ingest_last_batch_timestamp_seconds")

    static func record(_ result: IngestResult, elapsed: Duration) {
        batches.increment()
        accepted.increment(by: result.accepted)
        duplicates.increment(by: result.duplicates)
        rejected.increment(by: result.rejected.count)
        charged.increment(by: Int(clamping: result.chargedQuota))
        duration.record(duration: elapsed)
        providerRateLimited.increment(by: result.providerRateLimited)
        lastBatch.record(Date().timeIntervalSince1970)
    }
}
