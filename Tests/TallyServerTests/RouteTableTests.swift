import Foundation
import Hummingbird
import TallyPostgres
import TallyServer
import TallyTestSupport
import Testing

/// The router's route table against the HTTP contract, without a database: every route a
/// controller lists is in docs/openapi.yaml with its method, and every documented route is served.
@Suite("route table")
struct RouteTableTests {
    @Test("the routes served are exactly the routes docs/openapi.yaml documents")
    func routesMatchTheContract() throws {
        let configuration = TallyConfiguration(databaseURL: "postgres://tally@127.0.0.1:1/none")
        let pool = PostgresPool(url: configuration.databaseURL, size: 1)
        let router = buildRouter(TallyServices(pool: pool), configuration: configuration)
        try router.validate()
        let served = Set(router.routes.map { "\($0.method.rawValue) \($0.path)" })
        let documented = try Self.documentedRoutes()
        #expect(served.subtracting(documented).sorted() == [], "served but not in docs/openapi.yaml")
        #expect(documented.subtracting(served).sorted() == [], "in docs/openapi.yaml but not served")
    }

    /// `METHOD /path` of every operation under `paths:`, paths without their trailing slash
    /// (the router matches `/api/user` and `/api/user/` alike).
    static func documentedRoutes() throws -> Set<String> {
        let url = TestCluster.repositoryRoot.appendingPathComponent("docs/openapi.yaml")
        var routes = Set<String>()
        var path: String?
        for line in try String(contentsOf: url, encoding: .utf8).split(separator: "\n") {
            if line.hasPrefix("  /"), line.hasSuffix(":") {
                let text = line.dropFirst(2).dropLast()
                path = text.count > 1 && text.hasSuffix("/") ? String(text.dropLast()) : String(text)
            } else if !line.hasPrefix(" "), !line.isEmpty {
                path = nil  // a top-level key after `paths:`
            } else if let path, let method = Self.method(line) {
                routes.insert("\(method) \(path)")
            }
        }
        return routes
    }

    /// The HTTP method of an operation line (`    get:`), if it is one.
    static func method(_ line: Substring) -> String? {
        let methods = ["get", "put", "post", "delete", "patch", "head", "options"]
        guard line.hasPrefix("    "), !line.hasPrefix("     "), line.hasSuffix(":") else { return nil }
        let name = line.dropFirst(4).dropLast()
        return methods.contains(String(name)) ? name.uppercased() : nil
    }
}
