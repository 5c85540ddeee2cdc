import Foundation
import HTTPTypes
import Hummingbird
import TallyCore
import TallyStore

/// JSON of the System API: new-api's envelopes, field names written out exactly (no key
/// conversion, so `DeletedAt` stays capitalised as new-api emits it). Keys are sorted, so every
/// answer is byte-stable (an idempotent replay repeats the first answer byte for byte) and the
/// envelope reads `{"data":…,"message":"","success":true}` exactly as new-api's `gin.H` maps do.
enum SystemJSON {
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        return encoder
    }()

    /// `{"success":true,"message":"","data":…}`.
    static func success<T: Encodable>(_ data: T, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) throws
        -> Response
    {
        try json(Success(data: data), status: status, headers: headers)
    }

    /// `{"success":true,"message":""}` (new-api's answer to a delete or a create without data).
    static func successWithoutData() throws -> Response {
        try json(Bare(), status: .ok)
    }

    /// Any encodable value as the whole body. Never stored by a cache (a browser's disk cache
    /// included): some answers carry a secret shown once (a new key, a rotated access token,
    /// redemption codes), and nearly every answer is the caller's own.
    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) throws
        -> Response
    {
        var headers = headers
        headers[.contentType] = "application/json; charset=utf-8"
        headers[.cacheControl] = headers[.cacheControl] ?? "no-store"
        let data = try encoder.encode(value)
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    struct Success<T: Encodable>: Encodable {
        var success = true
        var message = ""
        var data: T
    }

    struct Bare: Encodable {
        var success = true
        var message = ""
    }

    /// new-api's `PageInfo`: `{"page","page_size","total","items"}`.
    struct PageInfo<Item: Encodable>: Encodable {
        var page: Int
        var page_size: Int
        var total: Int
        var items: [Item]

        init<Source>(_ page: Page<Source>, _ transform: (Source) -> Item) {
            self.page = page.request.page
            page_size = page.request.size
            total = page.total
            items = page.items.map(transform)
        }
    }
}

/// Query parameters and bodies of System API requests, with clear messages for bad input.
enum SystemInput {
    static let maximumBodyBytes = 1 << 20

    /// new-api's `GetPageQuery`: `p` is 1-based (default 1); the size is the first positive of
    /// `page_size`, `ps`, `size`, else 10; capped at 100. Unreadable values fall through, as
    /// new-api's `strconv.Atoi` errors do.
    static func page(_ request: Request) -> PageRequest {
        let query = request.uri.queryParameters
        func positive(_ name: String) -> Int? {
            guard let text = query[name[...]], let value = Int(text), value > 0 else { return nil }
            return value
        }
        let page = min(positive("p") ?? 1, 10_000_000)
        let size = min(positive("page_size") ?? positive("ps") ?? positive("size") ?? 10, 100)
        return PageRequest(page: page, size: size)
    }

    /// A query parameter, nil when absent or empty; 400 when it holds control characters
    /// (PostgreSQL text cannot hold NUL) or is longer than 1000 characters.
    static func string(_ request: Request, _ name: String) throws -> String? {
        guard let value = request.uri.queryParameters[name[...]], !value.isEmpty else { return nil }
        guard value.count <= 1000 else { throw APIError.invalidRequest("\(name) is longer than 1000 characters") }
        guard !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            throw APIError.invalidRequest("\(name) must not contain control characters")
        }
        return String(value)
    }

    /// new-api's `?status_only=`: any value but an empty one asks for a status-only update
    /// (`status_only=0` too, as new-api reads it).
    static func statusOnly(_ request: Request) throws -> Bool { try string(request, "status_only") != nil }

    /// An integer query parameter; nil when absent or empty; 400 when not an integer.
    static func integer(_ request: Request, _ name: String) throws -> Int64? {
        guard let text = try string(request, name) else { return nil }
        guard let value = Int64(text) else {
            throw APIError.invalidRequest("\(name) must be an integer, got \"\(text.prefix(40))\"")
        }
        return value
    }

    /// `?tid=`: a trace id (32 hex characters, any case), lowercased; nil when absent.
    static func tid(_ request: Request) throws -> String? {
        guard let tid = try string(request, "tid")?.lowercased() else { return nil }
        guard TraceID.isValid(tid) else { throw APIError.invalidRequest("tid must be 32 hexadecimal characters") }
        return tid
    }

    /// A path id: a positive integer, else 404 (no such resource can exist).
    static func id(_ context: TallyRequestContext, _ name: String = "id", what: String) throws -> Int64 {
        guard let text = context.parameters.get(name), let id = Int64(text), id > 0 else {
            throw APIError.notFound("\(what) not found")
        }
        return id
    }

    /// Decodes a JSON object body. Unknown fields are ignored (as new-api does); a wrong type
    /// names the field and what it should be.
    static func decode<T: Decodable>(_ type: T.Type, from request: Request) async throws -> T {
        try decode(type, from: try await body(request))
    }

    /// The body, at most `limit` bytes (1 MiB unless given; larger answers 413); 400 when empty.
    static func body(_ request: Request, upTo limit: Int = maximumBodyBytes) async throws -> Data {
        Data(buffer: try await bodyBuffer(request, upTo: limit))
    }

    /// The body as received (no copy); the same limits and errors as ``body(_:upTo:)``.
    static func bodyBuffer(_ request: Request, upTo limit: Int = maximumBodyBytes) async throws -> ByteBuffer {
        var request = request
        let buffer = try await request.collectBody(upTo: limit)
        guard buffer.readableBytes > 0 else { throw APIError.invalidRequest("the request body must be a JSON object") }
        return buffer
    }

    static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch let error as DecodingError {
            throw APIError.invalidRequest(message(for: error))
        } catch {
            throw APIError.invalidRequest("the request body is not valid JSON")
        }
    }

    static func message(for error: DecodingError) -> String {
        func path(_ codingPath: [any CodingKey]) -> String {
            codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
                .replacingOccurrences(of: ".[", with: "[")
        }
        func describe(_ type: Any.Type) -> String {
            switch type {
            case is Int.Type, is Int64.Type, is Int32.Type: "an integer"
            case is Bool.Type: "true or false"
            case is String.Type: "a string"
            case is Double.Type: "a number"
            default:
                String(describing: type).hasPrefix("Array") ? "an array" : "an object"
            }
        }
        switch error {
        case .typeMismatch(let type, let context):
            let field = path(context.codingPath)
            return field.isEmpty ? "the request body must be \(describe(type))" : "\(field) must be \(describe(type))"
        case .valueNotFound(let type, let context):
            return "\(path(context.codingPath)) must be \(describe(type)), not null"
        case .keyNotFound(let key, let context):
            let field = path(context.codingPath + [key])
            return "\(field) is required"
        case .dataCorrupted(let context):
            let field = path(context.codingPath)
            if field.isEmpty { return "the request body is not valid JSON" }
            return "\(field) has an invalid value: \(context.debugDescription)"
        @unknown default:
            return "the request body is not valid"
        }
    }
}
