import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import TallyCore
import TallyServer
import TallyTestSupport
import Testing

/// The real application on a fresh database, on an ephemeral port.
enum TestApp {
    static func configuration(_ db: TestDatabase, gatewaySecret: String = "test-gateway-secret") -> TallyConfiguration {
        TallyConfiguration(
            host: "127.0.0.1", port: 0, databaseURL: db.url, poolSize: 4,
            gatewaySecret: gatewaySecret, logLevel: .warning)
    }

    /// The application; `adjust` changes the test configuration first (limits, timeouts).
    static func build(_ db: TestDatabase, _ adjust: (inout TallyConfiguration) -> Void = { _ in }) async throws
        -> some ApplicationProtocol
    {
        var configuration = configuration(db)
        adjust(&configuration)
        return try await buildApplication(configuration)
    }
}

extension HTTPField.Name {
    static let xTid = HTTPField.Name("X-Tid")!
    static let traceparent = HTTPField.Name("traceparent")!
}

/// The parts of an error body, whichever envelope it came in.
struct ErrorBody: Equatable {
    var message: String
    var code: String
    var tid: String
    var envelope: String

    init(_ buffer: ByteBuffer) throws {
        let object = try #require(try JSONSerialization.jsonObject(with: Data(buffer: buffer)) as? [String: Any])
        if let error = object["error"] as? [String: Any] {
            envelope = "gateway"
            message = try #require(error["message"] as? String)
            code = try #require(error["code"] as? String)
            tid = try #require(error["tid"] as? String)
            #expect(error["type"] as? String == "new_api_error")
        } else {
            envelope = "system"
            #expect(object["success"] as? Bool == false)
            message = try #require(object["message"] as? String)
            code = try #require(object["code"] as? String)
            tid = try #require(object["tid"] as? String)
        }
    }
}
