import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import TallyCore
import TallyServer
import TallyStore
import TallyTestSupport
import Testing

/// The web console's files (issue 18). The browser tests of the console itself are
/// `ops/console-test` (`ops/slow-tests/console`).
@Suite("Console")
struct ConsoleHTTPTests {
    static let csp =
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        + "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

    static let files: [(path: String, source: String, contentType: String)] = [
        ("/console/", "index.html", "text/html; charset=utf-8"),
        ("/console", "index.html", "text/html; charset=utf-8"),
        ("/console/index.html", "index.html", "text/html; charset=utf-8"),
        ("/console/console.js", "console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "console.css", "text/css; charset=utf-8"),
        ("/console/chart.min.js", "chart.min.js", "text/javascript; charset=utf-8"),
        ("/console/favicon.svg", "favicon.svg", "image/svg+xml"),
        ("/console/chart.js-LICENSE.txt", "chart.js-LICENSE.txt", "text/plain; charset=utf-8"),
    ]

    static func source(_ name: String) throws -> Data {
        try Data(
            contentsOf: TestCluster.repositoryRoot.appendingPathComponent("Sources/TallyServer/Console/web")
                .appendingPathComponent(name))
    }

    @Test("every console file is served as shipped, with its content type, a strict CSP and an ETag")
    func filesAndHeaders() async throws {
        let db = try await TestDatabase.shared("console")
        try await TestApp.build(db).test(.live) { client in
            for file in Self.files {
                let response = try await client.execute(uri: file.path, method: .get)
                #expect(response.status == .ok, "\(file.path)")
                #expect(response.headers[.contentType] == file.contentType, "\(file.path)")
                #expect(response.headers[.contentSecurityPolicy] == Self.csp, "\(file.path)")
                #expect(response.headers[.xContentTypeOptions] == "nosniff", "\(file.path)")
                #expect(response.headers[HTTPField.Name("Referrer-Policy")!] == "no-referrer", "\(file.path)")
                #expect(response.headers[HTTPField.Name("X-Frame-Options")!] == "DENY", "\(file.path)")
                let shipped = try Self.source(file.source)
                #expect(Data(buffer: response.body) == shipped, "\(file.path)")
                let etag = try #require(response.headers[.eTag], "\(file.path)")
                let again = try await client.execute(uri: file.path, method: .get, headers: [.ifNoneMatch: etag])
                #expect(again.status == .notModified, "\(file.path)")
                #expect(again.body.readableBytes == 0)
                #expect(again.headers[.contentSecurityPolicy] == Self.csp)
            }
        }
    }

    @Test("a name the console does not ship is a 404 in the API's envelope, with a tid")
    func unknownFile() async throws {
        let db = try await TestDatabase.shared("console")
        try await TestApp.build(db).test(.live) { client in
            for path in ["/console/nope.js", "/console/..%2FPackage.swift", "/console/web", "/console/a/b.js"] {
                let response = try await client.execute(uri: path, method: .get)
                #expect(response.status == .notFound, "\(path)")
                let error = try ErrorBody(response.body)
                #expect(error.code == "not_found", "\(path)")
                #expect(error.tid == response.headers[.xTid], "\(path)")
            }
        }
    }

    @Test("the page has no inline script, style or event handler (the CSP blocks them) and loads only shipped files")
    func pageNeedsNothingTheCSPBlocks() async throws {
        let html = String(decoding: try Self.source("index.html"), as: UTF8.self)
        #expect(!html.contains("<style"))
        #expect(!html.contains(" style="))
        #expect(html.range(of: #"<script(?![^>]*\bsrc=)"#, options: .regularExpression) == nil)
        #expect(html.range(of: #"\son[a-z]+="#, options: .regularExpression) == nil)
        #expect(html.range(of: #"(src|href)="(https?:)?//"#, options: .regularExpression) == nil)
        let script = String(decoding: try Self.source("console.js"), as: UTF8.self)
        #expect(!script.contains("innerHTML"), "the script builds the DOM with textContent only")
        #expect(!script.contains("eval("))
        let db = try await TestDatabase.shared("console")
        let referenced = html.matches(of: /(?:src|href)="(\/console\/[^"]+)"/).map { String($0.output.1) }
        #expect(referenced.count >= 4)
        try await TestApp.build(db).test(.live) { client in
            for path in referenced {
                let response = try await client.execute(uri: path, method: .get)
                #expect(response.status == .ok, "\(path)")
            }
        }
    }
}
