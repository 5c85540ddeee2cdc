import Hummingbird

/// new-api's success envelope: `{"success":true,"message":"","data":…}`.
public struct Envelope<Data: Encodable & Sendable>: ResponseEncodable, Sendable {
    public var success = true
    public var message = ""
    public var data: Data

    public init(_ data: Data) { self.data = data }
}
