import Foundation

/// The part of a URL that may be shown in logs, errors and audit rows: `scheme://host[:port]`.
/// Paths and queries of webhook and download URLs often carry tokens, and user info carries
/// credentials, so they are left out.
public enum URLOrigin {
    /// `scheme://host[:port]`, or `(invalid URL)` when `url` has no scheme or host.
    public static func of(_ url: String) -> String {
        guard let components = URLComponents(string: url), let scheme = components.scheme, let host = components.host,
            !host.isEmpty
        else { return "(invalid URL)" }
        return "\(scheme)://\(host)" + (components.port.map { ":\($0)" } ?? "")
    }
}
