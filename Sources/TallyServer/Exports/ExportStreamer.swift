import Foundation
import HTTPTypes
import Hummingbird
import Logging
import TallyCore
import TallyStore

/// What the export routes share: reading an export's parameters, and streaming its rows.
struct ExportStreamer: Sendable {
    let exporter: UsageExporter
    let slots: ExportSlots

    /// Reads month, by, format, tz and raw; every mistake is a 400 before anything runs.
    static func parse(
        _ request: Request, allowed: Set<ExportDimension>, defaultBy: String, userID: Int64?,
        rawAllowed: Bool = true
    ) throws -> UsageExport {
        let month = try month(SystemInput.string(request, "month"))
        let by = try SystemInput.string(request, "by")
        let format = try SystemInput.string(request, "format")
        let timeZone = try SystemInput.string(request, "tz")
        let raw = try flag(SystemInput.string(request, "raw"), name: "raw")
        // Refused, not ignored: a caller asking for rows must not take totals for them.
        guard rawAllowed || !raw else {
            throw APIError.invalidRequest("raw exports (every request row) are an admin's: leave out raw")
        }
        do {
            if raw {
                guard by == nil, timeZone == nil, format == nil || format == "csv" else {
                    throw APIError.invalidRequest(
                        "raw exports every request row as CSV: leave out by, tz and format (or give format=csv)")
                }
                return .raw(month: month, userID: userID)
            }
            return try UsageExport(
                month: month, by: ExportDimension.parseList(by ?? defaultBy, allowed: allowed),
                format: ExportFormat.parse(format ?? "csv"), userID: userID, timeZone: timeZone)
        } catch let error as StoreError {
            throw APIError.invalidRequest(error.description)
        }
    }

    static func month(_ text: String?) throws -> UsageMonth {
        guard let text else { throw APIError.invalidRequest("month is required: YYYY-MM (UTC)") }
        return try UsageMonth.parse(text, field: "month")
    }

    static func flag(_ text: String?, name: String) throws -> Bool {
        switch text {
        case nil, "false", "0": return false
        case "true", "1": return true
        default: throw APIError.invalidRequest("\(name) must be true or false")
        }
    }

    /// Streams the export as a chunked response. The response starts only once the export has
    /// produced its first chunk (or ended), so errors found before any output — a month whose
    /// request rows are gone, an unknown time zone — still get their status and envelope.
    func stream(_ export: UsageExport, _ context: TallyRequestContext) async throws -> Response {
        let caller = try context.requireUser().id
        try await slots.acquire(caller: caller)
        context.logger.info("export", metadata: ["export": "\(export.fileName)"])
        let pipe = ChunkPipe()
        let exporter = exporter, slots = slots
        // The slot is the export's connection: it goes back when the export ends, however.
        Task {
            defer { slots.release(caller: caller) }
            do {
                try await exporter.export(export) { try pipe.send($0) }
                pipe.finish(.success(()))
            } catch {
                pipe.finish(.failure(error))
            }
        }
        let reader = ChunkPipeReader(pipe)
        let first: ByteBuffer?
        do { first = try await reader.next() } catch {
            reader.close()
            throw error
        }
        let logger = context.logger
        let headers: HTTPFields = [
            .contentType: export.format == .csv ? "text/csv; charset=utf-8" : "application/x-ndjson",
            .contentDisposition: "attachment; filename=\"\(export.fileName)\"",
        ]
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                do {
                    var chunk = first
                    while let bytes = chunk {
                        try await writer.write(bytes)
                        chunk = try await reader.next()
                    }
                    try await writer.finish(nil)
                } catch {
                    // Too late for an error status: the connection is closed mid-body instead.
                    reader.close()
                    logger.warning("export stopped", metadata: ["export": "\(export.fileName)", "error": "\(error)"])
                    throw error
                }
            })
    }
}
