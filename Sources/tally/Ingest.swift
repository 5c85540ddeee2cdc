import ArgumentParser
import Foundation
import TallyCore
import TallyPostgres
import TallyServer
import TallyStore

struct Ingest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ingest a file of log lines (NDJSON) through the same pipeline as POST /gateway/v1/logs.",
        discussion: """
            For backfills and replays: exactly once per request id, so re-running a file charges nothing twice. \
            Progress goes to standard error. Exit status: 0 when every line was stored or was a duplicate; \
            \(Self.someRejected) when some lines were rejected (each kept in ingest_rejects with its code and the \
            batch's tid, everything else stored; fix and re-run them); 1 when an error stopped the run (the \
            batches committed before it stay; re-running the file charges nothing twice).
            """
    )

    /// The exit status of a run that stored everything but some rejected lines: a script must be
    /// able to tell it from a clean run (0) and from one that stopped (1).
    static let someRejected: Int32 = 3

    @OptionGroup var database: DatabaseOptions

    @Argument(help: "NDJSON file, or - for standard input.")
    var file: String

    @Option(help: "Lines per batch (one transaction each).")
    var batchSize = 10_000

    @Option(help: "Batches in flight at once.")
    var parallel = 2

    @Option(help: "gateway or litellm.")
    var format = "gateway"

    @Flag(help: "No progress line.")
    var quiet = false

    func validate() throws {
        guard (1...50_000).contains(batchSize) else { throw ValidationError("--batch-size must be within 1…50000") }
        guard (1...16).contains(parallel) else { throw ValidationError("--parallel must be within 1…16") }
        guard IngestFormat(rawValue: format) != nil else {
            throw ValidationError("--format must be gateway or litellm")
        }
    }

    func run() async throws {
        let pool = try await database.migratedPool(size: parallel + 2)
        let prices = PriceCatalog(repository: PostgresPriceRepository(pool: pool))
        try await prices.reload()
        let droppedMonths = DroppedLogMonths(pool: pool)
        try await droppedMonths.refresh()
        let ingestor = Ingestor(
            prices: prices, tokens: TokenDirectory(pool: pool), repository: PostgresIngestRepository(pool: pool),
            droppedMonths: droppedMonths)
        let input = file == "-" ? FileHandle.standardInput : try FileHandle(forReadingFrom: URL(fileURLWithPath: file))
        let format = IngestFormat(rawValue: format)!
        let progress = Progress(quiet: quiet)
        let tid = TraceID.generate()
        // Folds as it goes (beside any running server's settler), and what is left at the end,
        // so the command leaves balances and rollups folded.
        let settler = Settler(pool: pool)
        // Prices and dropped months are read again every 5 s, as tally serve does: a backfill
        // runs for hours, and a version loaded meanwhile prices the lines dated after it.
        let settling = Task {
            var round = 0
            while (try? await Task.sleep(for: .milliseconds(200))) != nil {
                _ = try? await settler.foldBalances()
                round += 1
                if round % 25 == 0 {
                    try? await prices.refreshIfChanged()
                    try? await droppedMonths.refresh()
                }
            }
        }
        defer { settling.cancel() }
        try await withThrowingTaskGroup(of: IngestResult.self) { group in
            var inFlight = 0
            let batches = LineBatches(
                handle: input, linesPerBatch: batchSize, bytesPerBatch: IngestLimits().maxBytes / 2)
            // Rejects are kept under the run's one tid, numbered by their line in the file.
            var linesBefore = 0
            for try await batch in batches {
                if inFlight == parallel, let result = try await group.next() {
                    progress.add(result)
                    inFlight -= 1
                }
                group.addTask { [linesBefore] in
                    try await ingestor.ingest(batch, format: format, tid: tid, source: "cli", linesBefore: linesBefore)
                }
                linesBefore += batch.count { $0 == UInt8(ascii: "\n") }
                inFlight += 1
            }
            for try await result in group { progress.add(result) }
        }
        settling.cancel()
        await settling.value
        try await settler.foldAll()
        progress.finish()
        await pool.close()
        if progress.rejected > 0 {
            FileHandle.standardError.write(
                Data(
                    "tally ingest: \(progress.rejected) line(s) rejected, kept in ingest_rejects (batch_tid \(tid))\n"
                        .utf8))
            throw ExitCode(Self.someRejected)
        }
    }
}

/// Reads a file in batches of whole lines without loading it all: at most `linesPerBatch`
/// lines and, unless one line is longer, `bytesPerBatch` bytes (a batch past the pipeline's
/// byte limit would be refused whole: LiteLLM's lines run to several KB each).
struct LineBatches: AsyncSequence {
    typealias Element = [UInt8]
    let handle: FileHandle
    let linesPerBatch: Int
    let bytesPerBatch: Int

    struct AsyncIterator: AsyncIteratorProtocol {
        let handle: FileHandle
        let linesPerBatch: Int
        let bytesPerBatch: Int
        var pending: [UInt8] = []
        var finished = false

        /// Cuts the next batch at the `linesPerBatch`-th newline, or at the last newline before
        /// `bytesPerBatch`: one scan, one copy.
        mutating func next() async throws -> [UInt8]? {
            var newlines = 0
            var scanned = 0
            var lastNewline: Int?
            while true {
                while scanned < pending.count {
                    if scanned >= bytesPerBatch, let lastNewline { return take(lastNewline + 1) }
                    if pending[scanned] == 0x0A {
                        newlines += 1
                        lastNewline = scanned
                        if newlines == linesPerBatch { return take(scanned + 1) }
                    }
                    scanned += 1
                }
                if finished { return pending.isEmpty ? nil : take(pending.count) }
                let chunk = try handle.read(upToCount: 4 << 20) ?? Data()
                if chunk.isEmpty { finished = true } else { pending.append(contentsOf: chunk) }
            }
        }

        private mutating func take(_ count: Int) -> [UInt8] {
            let batch = Array(pending[..<count])
            pending.removeFirst(count)
            return batch
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(handle: handle, linesPerBatch: linesPerBatch, bytesPerBatch: bytesPerBatch)
    }
}

/// The progress line on standard error and the closing summary.
final class Progress: @unchecked Sendable {
    // Touched only from the command's own task.
    private let started = Date()
    private let quiet: Bool
    private var accepted = 0, duplicates = 0, charged: Int64 = 0
    private var rejectedByCode: [String: Int] = [:]
    var rejected: Int { rejectedByCode.values.reduce(0, +) }
    private var lines: Int { accepted + duplicates + rejected }

    init(quiet: Bool) { self.quiet = quiet }

    func add(_ result: IngestResult) {
        accepted += result.accepted
        duplicates += result.duplicates
        charged += result.chargedQuota
        for reject in result.rejected { rejectedByCode[reject.code, default: 0] += 1 }
        guard !quiet else { return }
        let elapsed = max(Date().timeIntervalSince(started), 0.001)
        FileHandle.standardError.write(Data("\r\(lines) lines, \(Int(Double(lines) / elapsed)) lines/s   ".utf8))
    }

    func finish() {
        let elapsed = max(Date().timeIntervalSince(started), 0.001)
        if !quiet { FileHandle.standardError.write(Data("\n".utf8)) }
        print(
            "lines \(lines), accepted \(accepted), duplicates \(duplicates), rejected \(rejected)"
        )
        for (code, count) in rejectedByCode.sorted(by: { $0.key < $1.key }) { print("  rejected \(code): \(count)") }
        print("charged \(charged) units = \(Money.formatUSD(units: charged)) USD")
        print(String(format: "elapsed %.2f s, %.0f lines/s", elapsed, Double(lines) / elapsed))
    }
}

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the money invariants over the whole database; exit 1 listing any account that breaks them.",
        discussion: """
            balance = sum of ledger rows; used_quota = ledger charges = quota of logged requests (usage \
            rollups); request_count = logged requests; the same per token; rollups = request rows for every \
            month still kept. With --month: that month's ledger charges = its usage rollups (what every \
            export and statement sums) = its request rows, while kept.
            """)

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Check one month (YYYY-MM, UTC) instead: exports, statements and ledger charges agree.")
    var month: String?

    func run() async throws {
        let month = try month.map { try monthOption($0, name: "--month") }
        let pool = try await database.currentPool(size: 1)
        let violations = try await Auditor(pool: pool).run(month: month)
        await pool.close()
        guard violations.isEmpty else {
            for violation in violations { print(violation) }
            print("audit failed: \(violations.count) problem(s)")
            throw ExitCode(1)
        }
        print("audit clean")
    }
}
