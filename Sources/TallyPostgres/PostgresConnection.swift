import CLibPQ
import Foundation

/// A statement prepared once per connection, by name, on first use.
public struct PreparedStatement: Sendable, Hashable {
    public let name: String
    public let sql: String

    public init(_ name: String, _ sql: String) {
        self.name = name
        self.sql = sql
    }
}

/// One libpq connection. Every call blocks the calling thread, so it is used only from the
/// pool's worker threads (see `PostgresPool`), one thread at a time: the blocking calls are
/// `noasync`, so the compiler refuses them in async code.
public final class PostgresConnection: @unchecked Sendable {
    // Confined to one thread at a time by the pool; libpq connections are not thread-safe.
    private let handle: OpaquePointer
    private var preparedNames: Set<String> = []

    /// Connects with a libpq conninfo string or a `postgres://` URI. The session's time zone is
    /// pinned to UTC so timestamps round-trip through `PostgresTimestamp`.
    /// `options` are libpq connection parameters (`application_name`, `keepalives_idle` …) that
    /// override the URL's.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    public init(url: String, options: KeyValuePairs<String, String> = [:]) throws(PostgresError) {
        guard let handle = Self.connect(url, options) else {
            throw PostgresError(kind: .connection, message: "libpq could not allocate a connection")
        }
        guard PQstatus(handle) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(handle)).trimmingTrailingNewlines()
            PQfinish(handle)
            throw PostgresError(kind: .connection, message: Self.redactingPassword(of: url, in: message))
        }
        self.handle = handle
        // UTC as a POSIX zone ("UTC0"): it needs no time zone database, which a server built
        // --with-system-tzdata lacks on a bare host (the bench kit's). Output is the same, +00.
        try execute("SET TIME ZONE 'UTC0'; SET client_min_messages TO warning")
    }

    deinit { PQfinish(handle) }

    /// The URL as libpq's `dbname` (expanded as a conninfo or URI), then `options`, which libpq
    /// applies after it, so they win; before it, ``defaults(environment:)``, which the URL's own
    /// parameters override.
    private static func connect(_ url: String, _ options: KeyValuePairs<String, String>) -> OpaquePointer? {
        let strings =
            defaults(environment: ProcessInfo.processInfo.environment) + [("dbname", url)]
            + options.map { ($0.key, $0.value) }
        let keys = strings.map { strdup($0.0) }, values = strings.map { strdup($0.1) }
        defer { (keys + values).forEach { free($0) } }
        let keywords = keys.map { UnsafePointer($0) } + [nil], settings = values.map { UnsafePointer($0) } + [nil]
        return PQconnectdbParams(keywords, settings, 1)
    }

    /// What a connection gets unless its URL (or libpq's variable, `PGCONNECT_TIMEOUT`) says
    /// otherwise: at most `connectTimeoutSeconds` to connect. libpq's own default is to wait for
    /// ever, and the kernel gives up on a host that drops packets only after about two minutes,
    /// or never on one that accepted the connection and does not answer: each request that
    /// needed a new connection (and a shutdown's lease retirement) waited that long.
    static func defaults(environment: [String: String]) -> [(String, String)] {
        environment["PGCONNECT_TIMEOUT"] == nil ? [("connect_timeout", String(connectTimeoutSeconds))] : []
    }

    static let connectTimeoutSeconds = 10

    /// libpq quotes the part of a connection string it could not read (`invalid percent-encoded
    /// token: "pa%zzword"`), which may be the password: every spelling of it is blanked.
    static func redactingPassword(of url: String, in message: String) -> String {
        var passwords: [Substring] = []
        if let scheme = url.range(of: "://") {
            let authority = url[scheme.upperBound...].prefix { $0 != "/" && $0 != "?" }
            if let at = authority.lastIndex(of: "@"), let colon = authority[..<at].firstIndex(of: ":") {
                passwords.append(authority[authority.index(after: colon)..<at])
            }
        }
        for marker in ["password=", "password ="] {
            var rest = url[...]
            while let found = rest.range(of: marker) {
                rest = rest[found.upperBound...].drop { $0 == " " }
                let quoted = rest.first == "'"
                let value = (quoted ? rest.dropFirst() : rest).prefix { quoted ? $0 != "'" : !" &".contains($0) }
                passwords.append(value)
            }
        }
        var redacted = message
        for password in passwords where !password.isEmpty {
            for spelling in Set([String(password), String(password).removingPercentEncoding ?? ""])
            where !spelling.isEmpty {
                redacted = redacted.replacingOccurrences(of: spelling, with: "***")
            }
        }
        return redacted
    }

    /// False once libpq has seen the connection break; the pool then replaces it.
    public var isHealthy: Bool { PQstatus(handle) == CONNECTION_OK }

    /// Whether a connection that sat idle (no query, no LISTEN) may be used again. The server
    /// sends such a connection nothing unless it ends the session (a restart,
    /// `pg_terminate_backend`: a FATAL message, then the end of the stream, which may lag behind
    /// it), so anything to read means the pool should open a new one instead of failing the
    /// next call with this one.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    public func isUsableAfterIdle() -> Bool {
        let socket = PQsocket(handle)
        guard isHealthy, socket >= 0 else { return false }
        var descriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) == 0
    }

    /// True while a transaction is open (or failed and not yet rolled back).
    public var inTransaction: Bool {
        let status = PQtransactionStatus(handle)
        return status == PQTRANS_INTRANS || status == PQTRANS_INERROR
    }

    // MARK: Queries

    /// Runs one statement with text parameters (`$1`, `$2`, …) and returns its rows.
    @discardableResult
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    public func query(_ sql: String, _ parameters: [any PostgresEncodable] = []) throws(PostgresError) -> PostgresRows {
        let result = withParameters(parameters) { count, values in
            PQexecParams(handle, sql, count, nil, values, nil, nil, 0)
        }
        return try check(result, kind: .query)
    }

    /// Runs a prepared statement, preparing it on this connection the first time.
    @discardableResult
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    public func query(_ statement: PreparedStatement, _ parameters: [any PostgresEncodable] = []) throws(PostgresError)
        -> PostgresRows
    {
        if !preparedNames.contains(statement.name) {
            try check(PQprepare(handle, statement.name, statement.sql, 0, nil), kind: .query)
            preparedNames.insert(statement.name)
        }
        let result = withParameters(parameters) { count, values in
            PQexecPrepared(handle, statement.name, count, values, nil, nil, 0)
        }
        return try check(result, kind: .query)
    }

    /// Runs one or more statements without parameters (migrations, DDL, `BEGIN`).
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    public func execute(_ sql: String) throws(PostgresError) {
        try check(PQexec(handle, sql), kind: .query)
    }

    /// Runs `body` in a transaction: COMMIT when it returns, ROLLBACK when it throws.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    public func transaction<T>(_ body: (PostgresConnection) throws -> T) throws -> T {
        try execute("BEGIN")
        do {
            let value = try body(self)
            try execute("COMMIT")
            return value
        } catch {
            if isHealthy { try? execute("ROLLBACK") }
            throw error
        }
    }

    /// Quotes an identifier (table or database name) for the rare DDL that cannot take parameters.
    public func quoteIdentifier(_ name: String) -> String {
        guard let pointer = PQescapeIdentifier(handle, name, name.utf8.count) else { return "\"\"" }
        defer { PQfreemem(pointer) }
        return String(cString: pointer)
    }

    /// Quotes a text literal for the statements that cannot take parameters (`COPY (SELECT …)`).
    public func quoteLiteral(_ text: String) -> String {
        guard let pointer = PQescapeLiteral(handle, text, text.utf8.count) else { return "''" }
        defer { PQfreemem(pointer) }
        return String(cString: pointer)
    }

    // MARK: COPY

    /// Streams rows into `COPY … FROM STDIN`; returns the number of rows copied.
    @discardableResult
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    public func copyIn(_ sql: String, _ write: (inout CopyInWriter) throws -> Void) throws -> Int {
        try check(PQexec(handle, sql), kind: .copy, expecting: PGRES_COPY_IN)
        var writer = CopyInWriter(connection: self)
        do {
            try write(&writer)
            try writer.flush()
        } catch {
            _ = PQputCopyEnd(handle, "aborted by client")
            drainResults()
            throw error
        }
        guard PQputCopyEnd(handle, nil) == 1 else { throw connectionError(.copy) }
        let rows = try check(PQgetResult(handle), kind: .copy)
        drainResults()
        return rows.affectedRows
    }

    /// Streams `COPY … TO STDOUT`, handing each row's bytes to `read`; returns the row count.
    /// When `read` throws, the server is asked to cancel the COPY and that error is rethrown.
    @discardableResult
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    public func copyOut(_ sql: String, _ read: (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        try check(PQexec(handle, sql), kind: .copy, expecting: PGRES_COPY_OUT)
        var failure: (any Error)?
        while true {
            var buffer: UnsafeMutablePointer<CChar>?
            let length = PQgetCopyData(handle, &buffer, 0)
            if length == -1 { break }  // done; the final result follows
            guard length >= 0, let buffer else { throw connectionError(.copy) }
            defer { PQfreemem(buffer) }
            // After a consumer error keep draining what is in flight: libpq needs the COPY to end.
            if failure == nil {
                do { try read(UnsafeRawBufferPointer(start: buffer, count: Int(length))) } catch {
                    failure = error
                    cancelRunningStatement()
                }
            }
        }
        if let failure {
            drainResults()
            throw failure
        }
        let rows = try check(PQgetResult(handle), kind: .copy)
        drainResults()
        return rows.affectedRows
    }

    /// Asks the server to stop the statement in progress (it then ends with SQLSTATE 57014).
    private func cancelRunningStatement() {
        guard let cancel = PQgetCancel(handle) else { return }
        defer { PQfreeCancel(cancel) }
        var message = [CChar](repeating: 0, count: 256)
        _ = PQcancel(cancel, &message, Int32(message.count))
    }

    /// Sends one chunk of COPY data; returns the failure instead of throwing (called from a closure).
    fileprivate func putCopyData(_ bytes: UnsafeRawBufferPointer) -> PostgresError? {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return nil }
        let sent = PQputCopyData(handle, base.assumingMemoryBound(to: CChar.self), Int32(bytes.count))
        return sent == 1 ? nil : connectionError(.copy)
    }

    /// Pushes libpq's output buffer to the server (blocking).
    fileprivate func flushOutput() -> PostgresError? {
        PQflush(handle) == 0 ? nil : connectionError(.copy)
    }

    // MARK: Helpers

    @discardableResult
    private func check(_ result: OpaquePointer?, kind: PostgresError.Kind, expecting: ExecStatusType? = nil)
        throws(PostgresError) -> PostgresRows
    {
        let status = result.map(PQresultStatus) ?? PGRES_FATAL_ERROR
        let accepted =
            expecting.map { status == $0 }
            ?? (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_EMPTY_QUERY)
        guard accepted else {
            let error = PostgresError.from(result: result, connection: handle, kind: kind)
            PQclear(result)
            if expecting != nil { drainResults() }
            throw error
        }
        return PostgresRows(result: result)
    }

    // MARK: Notifications

    /// Waits up to `timeout` seconds for `NOTIFY` messages on the channels this connection
    /// `LISTEN`s to and returns them (empty after a quiet timeout). Throws when the connection
    /// breaks; a listener must then reconnect and assume it missed notifications.
    @available(*, noasync, message: "blocks its thread: call it inside PostgresPool.withConnection")
    public func waitForNotifications(timeout: Double) throws(PostgresError) -> [PostgresNotification] {
        var received = takeNotifications()
        guard received.isEmpty else { return received }
        let socket = PQsocket(handle)
        guard socket >= 0 else { throw connectionError(.connection) }
        var descriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, 1, Int32(timeout * 1000))
        if ready < 0, errno != EINTR { throw PostgresError(kind: .connection, message: "poll failed: errno \(errno)") }
        guard ready > 0 else { return [] }
        guard PQconsumeInput(handle) == 1, isHealthy else { throw connectionError(.connection) }
        received = takeNotifications()
        return received
    }

    private func takeNotifications() -> [PostgresNotification] {
        var received: [PostgresNotification] = []
        while let notice = PQnotifies(handle) {
            received.append(
                PostgresNotification(
                    channel: String(cString: notice.pointee.relname),
                    payload: String(cString: notice.pointee.extra)))
            PQfreemem(notice)
        }
        return received
    }

    private func drainResults() {
        while let extra = PQgetResult(handle) { PQclear(extra) }
    }

    private func connectionError(_ kind: PostgresError.Kind) -> PostgresError {
        PostgresError.from(result: nil, connection: handle, kind: kind)
    }

    private func withParameters<R>(
        _ parameters: [any PostgresEncodable], _ body: (Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> R
    ) -> R {
        let texts = parameters.map(\.postgresText)
        var cStrings: [UnsafeMutablePointer<CChar>?] = texts.map { $0.map { strdup($0) } ?? nil }
        defer { cStrings.forEach { free($0) } }
        return cStrings.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: max(buffer.count, 1)) {
                body(Int32(texts.count), texts.isEmpty ? nil : $0)
            }
        }
    }
}

/// Buffers COPY data and hands it to libpq in 256 KiB chunks.
public struct CopyInWriter {
    private let connection: PostgresConnection
    private var buffer: [UInt8] = []
    private static let flushThreshold = 256 * 1024

    init(connection: PostgresConnection) {
        self.connection = connection
        buffer.reserveCapacity(Self.flushThreshold + 4096)
    }

    /// Appends raw bytes (already in COPY text or CSV format).
    public mutating func write(_ bytes: some Sequence<UInt8>) throws(PostgresError) {
        buffer.append(contentsOf: bytes)
        if buffer.count >= Self.flushThreshold { try flush() }
    }

    public mutating func write(_ text: String) throws(PostgresError) {
        var text = text
        text.withUTF8 { buffer.append(contentsOf: $0) }
        if buffer.count >= Self.flushThreshold { try flush() }
    }

    /// Sends what is buffered to the server now, so that it works on those rows while the
    /// caller prepares more (libpq otherwise keeps up to 8 KiB in its own buffer too).
    public mutating func send() throws(PostgresError) {
        try flush()
        if let failure = connection.flushOutput() { throw failure }
    }

    mutating func flush() throws(PostgresError) {
        guard !buffer.isEmpty else { return }
        let sent = buffer.withUnsafeBytes { connection.putCopyData($0) }
        buffer.removeAll(keepingCapacity: true)
        if let failure = sent { throw failure }
    }
}

/// One row of COPY text format (tab-separated, `\N` for NULL, backslash escapes), built
/// straight into bytes so that hot paths format no intermediate strings.
public struct CopyRow {
    public private(set) var bytes: [UInt8] = []
    private var fieldCount = 0

    public init() { bytes.reserveCapacity(512) }

    /// Empties the row, keeping its capacity.
    public mutating func reset() {
        bytes.removeAll(keepingCapacity: true)
        fieldCount = 0
    }

    public mutating func append(_ text: String?) {
        separate()
        guard var text else {
            bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "N")])
            return
        }
        // Runs without a byte to escape are appended whole: most text has none.
        text.withUTF8 { utf8 in
            var runStart = 0
            for (index, byte) in utf8.enumerated() {
                guard let escaped = Self.escaped(byte) else { continue }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart..<index]))
                bytes.append(92)
                bytes.append(escaped)
                runStart = index + 1
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[runStart...]))
        }
    }

    /// The letter after the backslash that stands for `byte` in COPY text, nil for a byte
    /// written as it is.
    private static func escaped(_ byte: UInt8) -> UInt8? {
        guard byte <= UInt8(ascii: "\\") else { return nil }
        switch byte {
        case UInt8(ascii: "\\"): return UInt8(ascii: "\\")
        case UInt8(ascii: "\t"): return UInt8(ascii: "t")
        case UInt8(ascii: "\n"): return UInt8(ascii: "n")
        case UInt8(ascii: "\r"): return UInt8(ascii: "r")
        default: return nil
        }
    }

    public mutating func append(_ value: Int64) {
        separate()
        ASCIIDecimal.append(value, to: &bytes)
    }

    public mutating func append(_ value: Int64?) {
        guard let value else { return append(nil as String?) }
        append(value)
    }

    public mutating func append(_ value: Bool) {
        separate()
        bytes.append(value ? UInt8(ascii: "t") : UInt8(ascii: "f"))
    }

    /// A `timestamptz` in UTC with microseconds.
    public mutating func append(_ date: Date) {
        separate()
        PostgresTimestamp.append(date, to: &bytes)
    }

    /// Ends the row with a newline.
    public mutating func endRow() {
        bytes.append(10)
        fieldCount = 0
    }

    private mutating func separate() {
        if fieldCount > 0 { bytes.append(9) }
        fieldCount += 1
    }
}

/// One `NOTIFY` received by a listening connection.
public struct PostgresNotification: Sendable, Equatable {
    public let channel: String
    public let payload: String
}
