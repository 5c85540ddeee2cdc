import Foundation
import Hummingbird
import TallyPostgres
import TallyServer
import TallyTestSupport
import Testing
import Yams

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
    /// (the router matches `/api/user` and `/api/user/` alike). Read as YAML, so a document that
    /// is not valid YAML (which every OpenAPI tool then refuses) fails here too.
    static func documentedRoutes() throws -> Set<String> {
        let url = TestCluster.repositoryRoot.appendingPathComponent("docs/openapi.yaml")
        let document = try #require(try Yams.load(yaml: String(contentsOf: url, encoding: .utf8)) as? [String: Any])
        let paths = try #require(document["paths"] as? [String: Any])
        let methods: Set<String> = ["get", "put", "post", "delete", "patch", "head", "options"]
        var routes = Set<String>()
        for (text, item) in paths {
            let path = text.count > 1 && text.hasSuffix("/") ? String(text.dropLast()) : text
            for method in (item as? [String: Any])?.keys ?? [:].keys where methods.contains(method) {
                routes.insert("\(method.uppercased()) \(path)")
            }
        }
        return routes
    }
}
