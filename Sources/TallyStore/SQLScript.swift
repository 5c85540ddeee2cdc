import Foundation

/// A migration file cut into its top-level statements, so that the migrator sends them one at a
/// time. Citus forwards some DDL on a distributed table (`ALTER TABLE … ADD CONSTRAINT … CHECK`) to
/// the workers as the text of the query that carried it, and the workers refuse a text with more
/// than one command: a migration sent whole fails there once its tables are distributed.
///
/// A semicolon ends a statement unless it is inside a quoted string or identifier, a comment, or
/// a dollar-quoted body (`$$ … $$`, `$tag$ … $tag$`: function bodies). Comments stay with the
/// statement that follows them; blank and comment-only pieces are dropped.
public enum SQLScript {
    public static func statements(_ script: String) -> [String] {
        let text = Array(script.unicodeScalars)
        var statements: [String] = []
        var start = 0, index = 0, meaningful = false
        func finish(upTo end: Int) {
            if meaningful {
                let piece = String(String.UnicodeScalarView(text[start..<end]))
                statements.append(piece.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            start = end + 1
            meaningful = false
        }
        while index < text.count {
            let scalar = text[index]
            switch scalar {
            case ";":
                finish(upTo: index)
                index += 1
            case "'", "\"":
                meaningful = true
                index = closing(scalar, in: text, after: index)
            case "-" where next(text, index) == "-":
                while index < text.count, text[index] != "\n" { index += 1 }
            case "/" where next(text, index) == "*":
                index = commentEnd(in: text, from: index)
            case "$":
                meaningful = true
                index = dollarQuoteEnd(in: text, from: index)
            default:
                if !scalar.properties.isWhitespace { meaningful = true }
                index += 1
            }
        }
        finish(upTo: text.count)
        return statements
    }

    private static func next(_ text: [Unicode.Scalar], _ index: Int) -> Unicode.Scalar? {
        index + 1 < text.count ? text[index + 1] : nil
    }

    /// Past the quote that closes the one at `index` (a doubled quote is part of the text).
    private static func closing(_ quote: Unicode.Scalar, in text: [Unicode.Scalar], after index: Int) -> Int {
        var position = index + 1
        while position < text.count {
            if text[position] == quote {
                if next(text, position) == quote {
                    position += 2
                    continue
                }
                return position + 1
            }
            position += 1
        }
        return position
    }

    /// Past the end of the (nestable) block comment starting at `index`.
    private static func commentEnd(in text: [Unicode.Scalar], from index: Int) -> Int {
        var depth = 0, position = index
        while position < text.count {
            if text[position] == "/", next(text, position) == "*" {
                depth += 1
                position += 2
            } else if text[position] == "*", next(text, position) == "/" {
                depth -= 1
                position += 2
                if depth == 0 { return position }
            } else {
                position += 1
            }
        }
        return position
    }

    /// Past the closing tag when `index` starts a dollar quote (`$$` or `$tag$`); else past the `$`
    /// (a positional parameter such as `$1`).
    private static func dollarQuoteEnd(in text: [Unicode.Scalar], from index: Int) -> Int {
        var tagEnd = index + 1
        while tagEnd < text.count,
            text[tagEnd] == "_" || text[tagEnd].properties.isAlphabetic
                || (tagEnd > index + 1 && text[tagEnd].properties.numericType != nil)
        {
            tagEnd += 1
        }
        guard tagEnd < text.count, text[tagEnd] == "$" else { return index + 1 }
        let tag = text[index...tagEnd]
        var position = tagEnd + 1
        while position + tag.count <= text.count {
            if text[position..<position + tag.count].elementsEqual(tag) { return position + tag.count }
            position += 1
        }
        return text.count
    }
}
