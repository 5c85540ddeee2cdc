/// The username an imported account takes when its name in the source cannot be used as it is:
/// another Tally account holds it, or it is longer than Tally allows (docs/import.md, "Names").
public enum ImportedUsername {
    /// Tally's limit (the `users.username` CHECK), in Unicode scalars as PostgreSQL counts them.
    public static let maximumLength = 64

    /// True when Tally can hold `name` as a username.
    public static func fits(_ name: String) -> Bool {
        !name.isEmpty && name.unicodeScalars.count <= maximumLength
    }

    /// `<name>~<sourceID>`, the name cut so that the whole fits; while `isTaken` says that one is
    /// taken too, `<name>~<sourceID>~2`, `~3`, … Deterministic: the same name, id and taken
    /// names give the same answer on every run.
    public static func suffixed(_ name: String, sourceID: Int64, isTaken: (String) throws -> Bool) rethrows -> String {
        var attempt = 1
        while true {
            let suffix = "~\(sourceID)" + (attempt == 1 ? "" : "~\(attempt)")
            let kept = name.unicodeScalars.prefix(maximumLength - suffix.unicodeScalars.count)
            let candidate = String(String.UnicodeScalarView(kept)) + suffix
            if try !isTaken(candidate) { return candidate }
            attempt += 1
        }
    }
}
