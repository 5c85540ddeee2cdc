import Foundation
import TallyCore
import TallyStore

/// The CSV header of a rollup export.
public enum RollupColumns {
    public static let measures = [
        "requests", "failed_requests", "prompt_tokens", "completion_tokens", "cached_tokens",
        "cache_write_tokens", "audio_input_tokens", "audio_output_tokens", "images", "video_seconds",
        "calls", "predict_time", "quota", "usd",
    ]

    public static func header(_ dimensions: [ExportDimension]) -> [String] {
        dimensions.flatMap { dimension -> [String] in
            switch dimension {
            case .user: ["user_id", "username"]
            case .token: ["token_id", "token_name"]
            default: [dimension.rawValue]
            }
        } + measures
    }
}

/// The top-level keys of a flat JSON object, in the order written.
public enum JSONKeyOrder {
    public static func keys(of line: String) -> [String]? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            return nil
        }
        return object.keys.map { key in (key, line.range(of: JSONText.quote(key) + ":")?.lowerBound) }
            .sorted { ($0.1 ?? line.endIndex) < ($1.1 ?? line.endIndex) }.map(\.0)
    }
}

/// A JSON Lines rollup export read back as CSV-like rows (values in header order), so it can be
/// compared with `UsageFixture.expectedRows` field by field.
public enum JSONLinesExport {
    /// Throws when the text is not one object per line ending in a newline, when an object's keys
    /// are not the CSV header in order, or when `usd` is not exact text.
    public static func rows(_ text: String, by dimensions: [ExportDimension]) throws -> [[String]] {
        guard !text.isEmpty else { return [] }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.last == "" else {
            throw TestClusterError(message: "the JSON Lines export does not end with a newline")
        }
        let header = RollupColumns.header(dimensions)
        return try lines.dropLast().enumerated().map { number, line in
            // Key order as in CSV: checked on the raw text, then the values are read.
            guard let keys = JSONKeyOrder.keys(of: String(line)), keys == header,
                let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            else {
                throw TestClusterError(
                    message: "JSON Lines row \(number + 1) is not an object keyed \(header): \(line.prefix(300))")
            }
            guard object["usd"] is String else { throw TestClusterError(message: "row \(number + 1): usd is not text") }
            return header.map { key in
                if let number = object[key] as? NSNumber { return number.stringValue }
                return object[key] as? String ?? ""
            }
        }
    }
}
