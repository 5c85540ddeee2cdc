import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import TallyCore

/// The web console (issue 18, docs/console.md): static HTML, CSS and JavaScript under `/console/`.
/// The page signs in with a system access token and does everything through the System API, so
/// this controller only serves files: read from the TallyServer bundle once, kept in memory, and
/// answered with a strict Content-Security-Policy (no inline script or style, nothing from other
/// origins, no forms posted anywhere).
struct ConsoleController {
    let files: ConsoleFiles

    /// Every console route, in one place.
    var routes: RouteCollection<TallyRequestContext> {
        let routes = RouteCollection(context: TallyRequestContext.self)
        routes.get(use: index)
        routes.get(":file", use: file)
        return routes
    }

    func addRoutes(to router: Router<TallyRequestContext>) {
        router.addRoutes(routes, atPath: "/console")
    }

    /// `/console/` (and `/console`): the page.
    @Sendable func index(_ request: Request, context: TallyRequestContext) throws -> Response {
        try serve("index.html", request)
    }

    /// `/console/{file}`: one of the bundled files; any other name is 404.
    @Sendable func file(_ request: Request, context: TallyRequestContext) throws -> Response {
        try serve(try context.parameters.require("file"), request)
    }

    func serve(_ name: String, _ request: Request) throws -> Response {
        guard let file = files[name] else { throw APIError.notFound("the console has no file \"\(name.prefix(60))\"") }
        var headers = Self.securityHeaders
        headers[.eTag] = file.etag
        if request.headers[values: .ifNoneMatch].contains(file.etag) {
            return Response(status: .notModified, headers: headers)
        }
        headers[.contentType] = file.contentType
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: file.bytes))
    }

    /// Scripts, styles, images and API calls from this origin only; no inline code, no plugins,
    /// no framing, and no form submission at all (every form is handled by the script, so a form
    /// sent without it can never put an access token in a URL).
    static let contentSecurityPolicy = [
        "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "connect-src 'self'",
        "object-src 'none'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
    ].joined(separator: "; ")

    static let securityHeaders: HTTPFields = [
        .contentSecurityPolicy: contentSecurityPolicy,
        .xContentTypeOptions: "nosniff",
        .referrerPolicy: "no-referrer",
        .xFrameOptions: "DENY",
        // Revalidate every time (cheap with the ETag), so a new release's files are used at once.
        .cacheControl: "no-cache",
    ]
}

extension HTTPField.Name {
    static let referrerPolicy = HTTPField.Name("Referrer-Policy")!
    static let xFrameOptions = HTTPField.Name("X-Frame-Options")!
}

/// The console's files by name, with their content type and ETag.
struct ConsoleFiles: Sendable {
    struct File: Sendable {
        let contentType: String
        let bytes: ByteBuffer
        let etag: String
    }

    let files: [String: File]

    subscript(name: String) -> File? { files[name] }

    /// The content type of each kind of file the console ships; files of other kinds are not served.
    static let contentTypes = [
        "html": "text/html; charset=utf-8",
        "css": "text/css; charset=utf-8",
        "js": "text/javascript; charset=utf-8",
        "svg": "image/svg+xml",
        "txt": "text/plain; charset=utf-8",
    ]

    /// The files shipped in the TallyServer bundle (`Console/web`), read once.
    static let bundled: ConsoleFiles = {
        guard let directory = Bundle.module.url(forResource: "web", withExtension: nil) else {
            return ConsoleFiles(files: [:])
        }
        return (try? load(directory)) ?? ConsoleFiles(files: [:])
    }()

    static func load(_ directory: URL) throws -> ConsoleFiles {
        var files: [String: File] = [:]
        for url in try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil) {
            guard let contentType = contentTypes[url.pathExtension] else { continue }
            let data = try Data(contentsOf: url)
            let digest = SHA256.hash(data: data).prefix(12).map { String(format: "%02x", $0) }.joined()
            files[url.lastPathComponent] = File(contentType: contentType, bytes: ByteBuffer(bytes: data),
                                                etag: "\"\(digest)\"")
        }
        return ConsoleFiles(files: files)
    }
}
