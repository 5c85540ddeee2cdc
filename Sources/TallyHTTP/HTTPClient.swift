import CCurl
import Dispatch
import Foundation
import Synchronization
import TallyCore

/// A small outbound HTTP client over libcurl: webhooks and price-sheet downloads.
///
/// libcurl's easy interface blocks, so every transfer runs on a dedicated dispatch queue, never
/// on a Swift concurrency or NIO event-loop thread. Cancelling the calling task aborts the
/// transfer within about a second (libcurl polls the progress callback).
public struct HTTPClient: Sendable {
    /// What to send. Only `http` and `https` URLs are accepted.
    public struct Request: Sendable {
        public enum Method: String, Sendable { case get = "GET", post = "POST" }

        public var method: Method
        public var url: String
        /// Header fields in order; names and values must not contain CR or LF.
        public var headers: [(name: String, value: String)]
        public var body: [UInt8]
        /// Time allowed to establish the connection (TCP and TLS).
        public var connectTimeout: Duration
        /// Time allowed for the whole transfer, connection included.
        public var timeout: Duration
        /// A longer response body fails with `HTTPClientError.Kind.responseTooLarge`, unless
        /// `cutsLongBody`.
        public var maxResponseBytes: Int
        /// A body past `maxResponseBytes` ends the transfer there and the response is answered
        /// with its body cut, as is one whose status came before the timeout, or a 2xx whose
        /// body broke off: for a caller that reads only the status (a webhook receiver answering
        /// 200 with a long page, or closing early, has the event).
        public var cutsLongBody = false
        /// Follow up to 5 redirects (to http or https only).
        public var followRedirects: Bool

        public init(
            method: Method = .get, url: String, headers: [(name: String, value: String)] = [], body: [UInt8] = [],
            connectTimeout: Duration = .seconds(5), timeout: Duration = .seconds(30),
            maxResponseBytes: Int = 1 << 20, followRedirects: Bool = false
        ) {
            self.method = method
            self.url = url
            self.headers = headers
            self.body = body
            self.connectTimeout = connectTimeout
            self.timeout = timeout
            self.maxResponseBytes = maxResponseBytes
            self.followRedirects = followRedirects
        }
    }

    /// What came back. Any status is a response; callers decide what a non-2xx means.
    public struct Response: Sendable {
        public let status: Int
        public let body: [UInt8]

        public var isSuccess: Bool { (200..<300).contains(status) }
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    public init() { _ = Self.globalInit }

    /// Performs `request`; throws `HTTPClientError` when no response arrived, or
    /// `CancellationError` when the task was cancelled.
    public func send(_ request: Request) async throws -> Response {
        try Task.checkCancellation()
        let flag = CancelFlag()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                Self.queue.async {
                    continuation.resume(with: Result { try Transfer.perform(request, cancelled: flag) })
                }
            }
        } onCancel: {
            flag.cancel()
        }
    }

    /// curl_global_init is not thread-safe everywhere: run it once, before any transfer.
    private static let globalInit: Void = { _ = tally_curl_global_init() }()
    private static let queue = DispatchQueue(label: "tally.http", qos: .utility, attributes: .concurrent)
}

/// A transfer that produced no HTTP response.
public struct HTTPClientError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The URL or a header was refused before anything was sent.
        case invalidRequest
        case unresolvedHost
        case connectionFailed
        case timedOut
        case responseTooLarge
        case tls
        case transport
    }

    public let kind: Kind
    /// libcurl's explanation, prefixed with the method and the URL's origin; never a path,
    /// query, credential or body.
    public let message: String

    public var description: String { message }
}

/// Set from the cancellation handler, read by libcurl's progress callback.
private final class CancelFlag: Sendable {
    private let state = Atomic<Bool>(false)
    func cancel() { state.store(true, ordering: .relaxed) }
    var isCancelled: Bool { state.load(ordering: .relaxed) }
}

/// One blocking libcurl transfer; lives on the HTTP queue for the duration of `perform`.
private final class Transfer {
    let limit: Int
    let cancelled: CancelFlag
    var body: [UInt8] = []
    var exceeded = false

    init(limit: Int, cancelled: CancelFlag) {
        self.limit = limit
        self.cancelled = cancelled
    }

    static func perform(_ request: HTTPClient.Request, cancelled: CancelFlag) throws -> HTTPClient.Response {
        let label = "\(request.method.rawValue) \(URLOrigin.of(request.url))"
        let lowercasedURL = request.url.lowercased()
        guard lowercasedURL.hasPrefix("http://") || lowercasedURL.hasPrefix("https://") else {
            throw HTTPClientError(kind: .invalidRequest, message: "\(label): only http and https URLs are supported")
        }
        // The header list and the error buffer are made before the handle, so that they are
        // freed after it: libcurl may write the error buffer until curl_easy_cleanup returns.
        var headers: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(headers) }
        // "Expect:" stops libcurl from waiting for 100-continue before sending a body.
        for (name, value) in request.headers + [("Expect", "")] {
            // Scalars, not Characters: "\r\n" is one Character equal to neither "\r" nor "\n".
            guard !(name + value).unicodeScalars.contains(where: { $0 == "\r" || $0 == "\n" }), !name.isEmpty else {
                throw HTTPClientError(
                    kind: .invalidRequest, message: "\(label): header \(name.prefix(40)) contains a line break")
            }
            headers = curl_slist_append(headers, value.isEmpty ? "\(name):" : "\(name): \(value)")
        }
        let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        defer { errorBuffer.deallocate() }
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        guard let handle = curl_easy_init() else {
            throw HTTPClientError(kind: .transport, message: "\(label): libcurl could not create a handle")
        }
        defer { curl_easy_cleanup(handle) }
        let transfer = Transfer(limit: request.maxResponseBytes, cancelled: cancelled)
        let code = withExtendedLifetime(transfer) {
            let context = Unmanaged.passUnretained(transfer).toOpaque()
            let setup = configure(handle, request, headers: headers, errorBuffer: errorBuffer, context: context)
            return setup == CURLE_OK ? curl_easy_perform(handle) : setup
        }
        var status = 0
        _ = tally_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        // With the status read, a caller that reads only the status has its answer: a body cut
        // at the cap or by the timeout, or, after a 2xx, by anything else (a receiver that closes
        // before its Content-Length, a reset: found by a review, such a webhook was sent again
        // until dead-lettered though the receiver had accepted it each time).
        let cut =
            request.cutsLongBody && status != 0 && code != CURLE_ABORTED_BY_CALLBACK
            && ((code == CURLE_WRITE_ERROR && transfer.exceeded) || code == CURLE_OPERATION_TIMEDOUT
                || (200..<300).contains(status))
        guard code == CURLE_OK || cut else {
            if code == CURLE_ABORTED_BY_CALLBACK, cancelled.isCancelled { throw CancellationError() }
            throw error(
                code, label: label, detail: String(cString: errorBuffer), exceeded: transfer.exceeded,
                limit: request.maxResponseBytes)
        }
        return HTTPClient.Response(status: status, body: transfer.body)
    }

    /// Sets every option; the first failure is returned (e.g. a malformed URL).
    private static func configure(
        _ handle: UnsafeMutableRawPointer, _ request: HTTPClient.Request,
        headers: UnsafeMutablePointer<curl_slist>?, errorBuffer: UnsafeMutablePointer<CChar>,
        context: UnsafeMutableRawPointer
    ) -> CURLcode {
        let steps: [() -> CURLcode] =
            [
                { tally_curl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer) },
                { tally_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1) },  // required with threads
                { tally_curl_setopt_string(handle, CURLOPT_PROTOCOLS_STR, "http,https") },
                { tally_curl_setopt_string(handle, CURLOPT_URL, request.url) },
                { tally_curl_setopt_string(handle, CURLOPT_USERAGENT, "tally") },
                { tally_curl_setopt_string(handle, CURLOPT_ACCEPT_ENCODING, "") },  // any encoding libcurl decodes
                { tally_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, milliseconds(request.connectTimeout)) },
                { tally_curl_setopt_long(handle, CURLOPT_TIMEOUT_MS, milliseconds(request.timeout)) },
                // Refuses a declared length past the cap before the body: the status is read then,
                // but a cut body is cut by the write callback instead.
                {
                    request.cutsLongBody
                        ? CURLE_OK : tally_curl_setopt_long(handle, CURLOPT_MAXFILESIZE, request.maxResponseBytes)
                },
                { tally_curl_setopt_slist(handle, CURLOPT_HTTPHEADER, headers) },
                { tally_curl_setopt_write_callback(handle, writeBody) },
                { tally_curl_setopt_pointer(handle, CURLOPT_WRITEDATA, context) },
                { tally_curl_setopt_xferinfo_callback(handle, checkCancelled) },
                { tally_curl_setopt_pointer(handle, CURLOPT_XFERINFODATA, context) },
                { tally_curl_setopt_long(handle, CURLOPT_NOPROGRESS, 0) },
            ] + redirectSteps(handle, request) + bodySteps(handle, request)
        for step in steps {
            let code = step()
            if code != CURLE_OK { return code }
        }
        return CURLE_OK
    }

    private static func redirectSteps(_ handle: UnsafeMutableRawPointer, _ request: HTTPClient.Request) -> [() ->
        CURLcode]
    {
        guard request.followRedirects else { return [] }
        return [
            { tally_curl_setopt_long(handle, CURLOPT_FOLLOWLOCATION, 1) },
            { tally_curl_setopt_long(handle, CURLOPT_MAXREDIRS, 5) },
            { tally_curl_setopt_string(handle, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") },
        ]
    }

    /// A POST copies its body into libcurl (COPYPOSTFIELDS needs the size set first).
    private static func bodySteps(_ handle: UnsafeMutableRawPointer, _ request: HTTPClient.Request) -> [() -> CURLcode]
    {
        guard request.method == .post else { return [] }
        return [
            { tally_curl_setopt_long(handle, CURLOPT_POSTFIELDSIZE, request.body.count) },
            {
                var body = request.body
                return body.withUnsafeMutableBytes {
                    tally_curl_setopt_pointer(handle, CURLOPT_COPYPOSTFIELDS, $0.baseAddress)
                }
            },
        ]
    }

    private static func milliseconds(_ duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        return max(1, Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000))
    }

    private static func error(_ code: CURLcode, label: String, detail: String, exceeded: Bool, limit: Int)
        -> HTTPClientError
    {
        let explanation = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
        let kind: HTTPClientError.Kind
        switch code {
        case CURLE_WRITE_ERROR where exceeded, CURLE_FILESIZE_EXCEEDED:
            return HTTPClientError(
                kind: .responseTooLarge, message: "\(label): the response is larger than \(limit) bytes")
        case CURLE_URL_MALFORMAT, CURLE_UNSUPPORTED_PROTOCOL: kind = .invalidRequest
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY: kind = .unresolvedHost
        case CURLE_COULDNT_CONNECT: kind = .connectionFailed
        case CURLE_OPERATION_TIMEDOUT: kind = .timedOut
        case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CACERT_BADFILE:
            kind = .tls
        default: kind = .transport
        }
        return HTTPClientError(kind: kind, message: "\(label): \(explanation)")
    }
}

/// CURLOPT_WRITEFUNCTION: appends to the transfer's body; returning less than given aborts
/// the transfer (the size cap, for bodies sent without a Content-Length).
private func writeBody(
    _ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?
) -> Int {
    guard let context else { return 0 }
    let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
    let length = size * count
    guard transfer.body.count + length <= transfer.limit else {
        transfer.exceeded = true
        return 0
    }
    if let data, length > 0 {
        transfer.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
    }
    return length
}

/// CURLOPT_XFERINFOFUNCTION: non-zero aborts the transfer once its task is cancelled.
private func checkCancelled(
    _ context: UnsafeMutableRawPointer?, _: curl_off_t, _: curl_off_t, _: curl_off_t, _: curl_off_t
) -> Int32 {
    guard let context else { return 0 }
    return Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue().cancelled.isCancelled ? 1 : 0
}
