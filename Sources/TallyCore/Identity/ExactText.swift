/// Text compared and hashed by its UTF-8 bytes, as PostgreSQL compares it. Swift's `String`
/// equality takes canonically equivalent texts (NFC "é" and NFD "e" + U+0301) for one, so two
/// request ids that PostgreSQL stores as two requests would be one in a Swift dictionary.
public struct ExactText: Hashable, Sendable, CustomStringConvertible {
    public let text: String

    public init(_ text: String) { self.text = text }

    public var description: String { text }

    public static func == (lhs: ExactText, rhs: ExactText) -> Bool {
        lhs.text.utf8.elementsEqual(rhs.text.utf8)
    }

    public func hash(into hasher: inout Hasher) {
        var bytes = text  // withUTF8 makes a (rare) non-contiguous string contiguous first
        bytes.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}
