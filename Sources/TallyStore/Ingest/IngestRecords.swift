import Foundation
import TallyCore

/// A log line that passed validation and rating, ready to store.
public struct PricedLine: Sendable {
    public var requestID: String
    public var createdAt: Date
    public var userID: Int64
    public var tokenID: Int64
    public var channelID: Int64?
    public var model: String
    public var group: String
    public var kind: RequestKind
    public var status: Int
    public var isStream: Bool
    public var durationMs: Int64
    public var ip: String?
    public var tid: String?
    public var error: String?
    public var usage: Usage
    /// The cost in quota units, rated with `priceVersionID`.
    public var quota: Int64
    public var priceVersionID: Int64

    public init(
        requestID: String, createdAt: Date, userID: Int64, tokenID: Int64, channelID: Int64?, model: String,
        group: String, kind: RequestKind, status: Int, isStream: Bool, durationMs: Int64, ip: String?,
        tid: String?, error: String?, usage: Usage, quota: Int64, priceVersionID: Int64
    ) {
        self.requestID = requestID
        self.createdAt = createdAt
        self.userID = userID
        self.tokenID = tokenID
        self.channelID = channelID
        self.model = model
        self.group = group
        self.kind = kind
        self.status = status
        self.isStream = isStream
        self.durationMs = durationMs
        self.ip = ip
        self.tid = tid
        self.error = error
        self.usage = usage
        self.quota = quota
        self.priceVersionID = priceVersionID
    }
}

/// A line that was not accepted: stored raw in `ingest_rejects` and reported back.
public struct RejectedLine: Sendable, Equatable, Codable {
    /// 1-based line number in the batch.
    public var line: Int
    public var requestID: String?
    public var code: String
    public var message: String
    /// The line as received (truncated to 64 KiB).
    public var raw: String

    public init(line: Int, requestID: String?, code: String, message: String, raw: String) {
        self.line = line
        self.requestID = requestID
        self.code = code
        self.message = message
        self.raw = raw
    }
}

/// What a batch turned into: the body of the ingest response.
public struct IngestResult: Sendable, Equatable {
    public var batchID: Int64
    public var accepted: Int
    public var duplicates: Int
    public var rejected: [RejectedLine]
    /// Sum of the quota of the newly accepted lines.
    public var chargedQuota: Int64
    /// Newly accepted lines whose `error` says the upstream provider rate-limited the request
    /// (`provider_rate_limited`, DESIGN §7), counted in metrics.
    public var providerRateLimited: Int = 0
}
