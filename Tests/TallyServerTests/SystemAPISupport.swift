import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import TallyCore
import TallyPostgres
import TallyServer
import TallyStore
import TallyTestSupport
import Testing

extension HTTPField.Name {
    static let newAPIUser = HTTPField.Name("New-Api-User")!
    static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
    static let xAPIKey = HTTPField.Name("x-api-key")!
    static let xGoogAPIKey = HTTPField.Name("x-goog-api-key")!
    static let anthropicVersion = HTTPField.Name("anthropic-version")!
}

/// A decoded HTTP answer: status, headers and the JSON body.
struct Answer {
    var status: Int
    var headers: HTTPFields
    var body: Any
    var text: String

    var object: [String: Any] { body as? [String: Any] ?? [:] }
    /// `data` of a success envelope.
    var data: Any? { object["data"] }
    var dataObject: [String: Any] { data as? [String: Any] ?? [:] }
    var success: Bool? { object["success"] as? Bool }
    /// `code` of an error, in either envelope.
    var errorCode: String? {
        (object["error"] as? [String: Any])?["code"] as? String ?? object["code"] as? String
    }
    var errorMessage: String? {
        (object["error"] as? [String: Any])?["message"] as? String ?? object["message"] as? String
    }
}

/// Requests against the live test server, as a user with an access token or with an API key.
struct API: Sendable {
    let client: any TestClientProtocol

    func call(
        _ method: HTTPRequest.Method, _ uri: String, token: String? = nil, json: String? = nil,
        headers extra: HTTPFields = [:]
    ) async throws -> Answer {
        var headers = extra
        if let token { headers[.authorization] = "Bearer \(token)" }
        if json != nil { headers[.contentType] = "application/json" }
        let response = try await client.execute(
            uri: uri, method: method, headers: headers,
            body: json.map { ByteBuffer(string: $0) })
        let text = String(buffer: response.body)
        let body = (try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])) ?? NSNull()
        return Answer(status: Int(response.status.code), headers: response.headers, body: body, text: text)
    }

    func get(_ uri: String, token: String? = nil, headers: HTTPFields = [:]) async throws -> Answer {
        try await call(.get, uri, token: token, headers: headers)
    }

    func post(_ uri: String, token: String?, _ json: String, headers: HTTPFields = [:]) async throws -> Answer {
        try await call(.post, uri, token: token, json: json, headers: headers)
    }

    func put(_ uri: String, token: String?, _ json: String) async throws -> Answer {
        try await call(.put, uri, token: token, json: json)
    }

    func delete(_ uri: String, token: String?) async throws -> Answer {
        try await call(.delete, uri, token: token)
    }
}

/// Accounts and fixtures made directly in the database.
struct Seed {
    let db: TestDatabase

    /// A fresh user (unique name) and its access token.
    func user(_ prefix: String = "u", role: Role = .user, group: String = "default", quota: Int64 = 0) async throws -> (
        user: User, token: String
    ) {
        let name = "\(prefix)-\(UInt32.random(in: 0...UInt32.max))"
        let created = try await PostgresUserRepository(pool: db.pool)
            .create(NewUser(username: name, role: role, group: group, quota: quota), by: .cli)
        return (created.user, created.accessToken)
    }

    /// A fresh group (unique name).
    func group(_ prefix: String = "g", selectable: Bool = true) async throws -> String {
        let name = "\(prefix)-\(UInt32.random(in: 0...UInt32.max))"
        _ = try await GroupRepository(pool: db.pool).create(name: name, selectable: selectable, by: .cli)
        return name
    }

    func channel(groups: [String], models: [String], status: ChannelStatus = .enabled) async throws
        -> TallyStore.Channel
    {
        try await ChannelRepository(pool: db.pool).create(
            ChannelDraft(
                name: "ch-\(UInt32.random(in: 0...UInt32.max))", status: status, groups: groups, models: models),
            by: .cli)
    }

    func key(user: Int64, _ draft: TokenDraft = TokenDraft(name: "k", unlimitedQuota: true)) async throws -> (
        token: APIToken, key: String
    ) {
        try await TokenRepository(pool: db.pool).create(userID: user, draft)
    }

    /// Stores a price version (the sheet's own `effective_from`); load before building the app.
    func prices(_ yaml: String) async throws {
        _ = try await PostgresPriceRepository(pool: db.pool).load(
            try PriceSheet.parse(yaml), effectiveFrom: nil, source: "test", by: .cli)
    }

    @discardableResult
    func sql(_ text: String, _ parameters: [any PostgresEncodable] = []) async throws -> PostgresRows {
        try await db.pool.withConnection { try $0.query(text, parameters) }
    }

    /// Units the user's open holds reserve (of its limited keys only, with `tokenOnly`).
    func openHolds(user: Int64, tokenOnly: Bool = false) async throws -> Int64 {
        try await int(
            "SELECT coalesce(sum(amount), 0)::bigint FROM holds WHERE user_id = $1 AND status = 'held'"
                + (tokenOnly ? " AND token_reserved" : ""), [user])
    }

    func int(_ text: String, _ parameters: [any PostgresEncodable] = []) async throws -> Int64 {
        try await db.scalar(text, parameters)
    }
}

/// The exact key set and JSON types of an object.
func jsonTypes(_ object: [String: Any]) -> [String: String] {
    object.mapValues { value in
        switch value {
        case is NSNull: "null"
        case let number as NSNumber: numberType(number)
        case is String: "string"
        case is [Any]: "array"
        case is [String: Any]: "object"
        default: "?"
        }
    }
}

func int64(_ value: Any?) -> Int64? { (value as? NSNumber)?.int64Value }
func double(_ value: Any?) -> Double? { (value as? NSNumber)?.doubleValue }

/// "bool", "int" or "number" for a number JSONSerialization produced.
func numberType(_ number: NSNumber) -> String {
    switch String(cString: number.objCType) {
    case "c", "B": "bool"
    case "d", "f": number.stringValue.contains(".") || number.stringValue.contains("e") ? "number" : "int"
    default: "int"
    }
}

/// The value of one series in Prometheus text (`/metrics`), 0 when it is not printed yet.
/// `series` is the name with its labels as printed, e.g. `tally_authorize_total{result="held"}`.
func metricValue(_ series: String, in text: String) -> Int {
    let line = text.split(separator: "\n").first { $0.hasPrefix(series + " ") }
    return line.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
}
