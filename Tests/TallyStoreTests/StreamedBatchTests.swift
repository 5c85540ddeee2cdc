import Foundation
import Synchronization
import TallyCore
import TallyPostgres
import TallyStore
import TallyTestSupport
import Testing

// Serialized: one test creates a partition, whose lock on request_logs waits for the others'
// open batches (by design, briefly: LogPartitions) and would stall their progress checks.
@Suite("a batch stored while its body arrives", .serialized)
struct StreamedBatchTests {
    /// 2026-11-10, the month of the lines below.
    static let now = Date(timeIntervalSince1970: 1_794_312_000)

    static func line(_ id: String, account: (user: Int64, token: Int64), quota: Int64 = 100, at: Date = now)
        -> PricedLine
    {
        FoldTests.line(id, account, quota: quota, at: at)
    }

    /// Starts storing a batch through a fresh hand-off, as the ingest route does.
    static func start(_ repository: PostgresIngestRepository) -> (BatchHandOff, Task<IngestResult, any Error>) {
        let handOff = BatchHandOff()
        let stored = Task {
            try await repository.store(streaming: handOff, tid: TraceID.generate(), source: "test", now: now)
        }
        return (handOff, stored)
    }

    /// Rows COPYed by open COPY statements of this database (PostgreSQL's progress view), once
    /// there are at least `rows` in `copies` of them.
    static func waitForCopies(_ db: TestDatabase, count copies: Int = 1, rows: Int64) async throws -> Bool {
        try await waitUntil(timeout: .seconds(30)) {
            try await db.scalar(
                """
                SELECT count(*) FROM pg_stat_progress_copy
                WHERE datname = current_database() AND relid = 'request_logs'::regclass AND tuples_processed >= $1
                """, [rows]) >= copies
        }
    }

    /// Whether a COPY into request_logs of this database comes to wait for a lock (a row another
    /// open batch inserted) within 30 s.
    static func waitForCopyWaitingOnLock(_ db: TestDatabase) async throws -> Bool {
        try await waitUntil(timeout: .seconds(30)) {
            try await db.scalar(
                """
                SELECT count(*) FROM pg_stat_activity
                WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'COPY request_logs%'
                """) == 1
        }
    }

    /// Whether, within 30 s, no other session of this database is inside a transaction.
    static func waitForNoOpenTransaction(_ db: TestDatabase) async throws -> Bool {
        try await waitUntil(timeout: .seconds(30)) {
            try await db.scalar(
                """
                SELECT count(*) FROM pg_stat_activity
                WHERE datname = current_database() AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
                """) == 0
        }
    }

    @Test("lines are in PostgreSQL's COPY before the body ends; the batch commits once it does")
    func rowsGoInBeforeTheEnd() async throws {
        let db = try await TestDatabase.shared("ingest-stream")
        try await db.prepareBilling(users: 5)
        let account = try await db.syntheticAccount(1)
        let (handOff, stored) = Self.start(PostgresIngestRepository(pool: db.pool))
        await handOff.send(.lines((1...3).map { Self.line("early-\($0)", account: account) }))
        #expect(try await Self.waitForCopies(db, rows: 3), "the first part was not copied before the body ended")
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'early-%'") == 0)
        await handOff.send(.lines([Self.line("early-4", account: account)]))
        await handOff.send(.end(rejects: [], totalLines: 4))
        let result = try await stored.value
        #expect(result.accepted == 4)
        #expect(result.chargedQuota == 400)
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE batch_id = $1", [result.batchID]) == 4)
        #expect(try await db.scalar("SELECT used_quota FROM user_balances WHERE id = $1", [account.user]) == 400)
    }

    @Test("ids repeated in the batch or already stored: the COPY falls back to the staging table, each stored once")
    func repeatsFallBack() async throws {
        let db = try await TestDatabase.shared("ingest-stream")
        try await db.prepareBilling(users: 5)
        let account = try await db.syntheticAccount(2)
        let repository = PostgresIngestRepository(pool: db.pool)
        _ = try await repository.store(
            [Self.line("again-stored", account: account)], rejects: [], totalLines: 1, tid: TraceID.generate(),
            source: "test")
        let (handOff, stored) = Self.start(repository)
        let twin = Self.line("again-twin", account: account)
        await handOff.send(.lines([twin, Self.line("again-stored", account: account)]))
        await handOff.send(.lines([twin, Self.line("again-new", account: account)]))
        let reject = RejectedLine(line: 5, requestID: "again-bad", code: "invalid_json", message: "m", raw: "{")
        await handOff.send(.end(rejects: [reject], totalLines: 5))
        let result = try await stored.value
        #expect(result.accepted == 2)
        #expect(result.duplicates == 2)
        #expect(result.rejected == [reject])
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'again-%'") == 3)
        #expect(try await db.scalar("SELECT used_quota FROM user_balances WHERE id = $1", [account.user]) == 300)
        #expect(try await db.scalar("SELECT rejected FROM ingest_batches WHERE id = $1", [result.batchID]) == 1)
    }

    /// Found by a review: the batch's repeats were found with Swift's string equality, which takes
    /// canonically equivalent ids (NFC "é", NFD "e" + U+0301) for one request; PostgreSQL compares
    /// bytes and stores both, so the second was dropped as a repeat and never billed.
    @Test("ids equal only under Unicode normalization are two requests, streamed or stored whole")
    func idsComparedByBytes() async throws {
        let db = try await TestDatabase.shared("ingest-stream")
        try await db.prepareBilling(users: 7)
        let account = try await db.syntheticAccount(7)
        let repository = PostgresIngestRepository(pool: db.pool)
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        #expect(composed == decomposed && !composed.utf8.elementsEqual(decomposed.utf8))
        let whole = try await repository.store(
            [Self.line("whole-" + composed, account: account), Self.line("whole-" + decomposed, account: account)],
            rejects: [], totalLines: 2, tid: TraceID.generate(), source: "test")
        #expect(whole.accepted == 2 && whole.duplicates == 0)
        let (handOff, stored) = Self.start(repository)
        await handOff.send(
            .lines([
                Self.line("streamed-" + composed, account: account),
                Self.line("streamed-" + decomposed, account: account),
            ]))
        await handOff.send(.end(rejects: [], totalLines: 2))
        let streamed = try await stored.value
        #expect(streamed.accepted == 2 && streamed.duplicates == 0)
        #expect(
            try await db.scalar(
                "SELECT count(*) FROM request_logs WHERE user_id = $1 AND request_id ~ '^(whole|streamed)-caf'",
                [account.user]) == 4)
    }

    @Test("a line of a month without a known partition: rolled back, the partition created, the batch stored whole")
    func unknownMonthStoresWhole() async throws {
        let db = try await TestDatabase.shared("ingest-stream")
        try await db.prepareBilling(users: 5)
        let account = try await db.syntheticAccount(3)
        let (handOff, stored) = Self.start(PostgresIngestRepository(pool: db.pool))
        // A month long before `now` that no test stores lines in: it has no partition yet.
        let earlier = Date(timeIntervalSince1970: 1_741_608_000)  // 2025-03-10
        await handOff.send(.lines([Self.line("month-now", account: account)]))
        #expect(try await Self.waitForCopies(db, rows: 1))
        await handOff.send(
            .lines([
                Self.line("month-before", account: account, at: earlier), Self.line("month-after", account: account),
            ]))
        // The transaction is rolled back before the rest of the body is read: a slow client
        // keeps no transaction (and no lock) open.
        #expect(try await Self.waitForNoOpenTransaction(db), "the stream kept its transaction open for the body's rest")
        await handOff.send(.lines([Self.line("month-last", account: account)]))
        await handOff.send(.end(rejects: [], totalLines: 4))
        let result = try await stored.value
        #expect(result.accepted == 4)
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE batch_id = $1", [result.batchID]) == 4)
        #expect(try await db.scalar("SELECT count(*) FROM pg_class WHERE relname = 'request_logs_y2025m03'") == 1)
        #expect(try await db.scalar("SELECT used_quota FROM user_balances WHERE id = $1", [account.user]) == 400)
    }

    @Test(
        "a month whose partition was dropped behind this process's back (tally retention) is made again: batches stored, streamed or whole"
    )
    func droppedMonthMadeAgain() async throws {
        let db = try await TestDatabase.create("ingest-dropped")
        try await db.prepareBilling(users: 1)
        let account = try await db.syntheticAccount(1)
        let repository = PostgresIngestRepository(pool: db.pool)
        let july = Date(timeIntervalSince1970: 1_720_612_800)  // 2024-07-10
        func store(_ id: String) async throws -> IngestResult {
            try await repository.store(
                [Self.line(id, account: account, at: july)], rejects: [], totalLines: 1, tid: TraceID.generate(),
                source: "test")
        }
        func dropJuly() async throws {
            try await db.pool.withConnection { try $0.execute("DROP TABLE request_logs_y2024m07") }
        }
        _ = try await store("dropped-first")
        try await dropJuly()
        // This process still takes July's partition for made: the batch finds none, makes it again.
        #expect(try await store("dropped-whole").accepted == 1)
        try await dropJuly()
        let (handOff, stored) = Self.start(repository)
        await handOff.send(
            .lines([
                Self.line("dropped-now", account: account), Self.line("dropped-streamed", account: account, at: july),
            ]))
        await handOff.send(.end(rejects: [], totalLines: 2))
        #expect(try await stored.value.accepted == 2)
        #expect(try await db.scalar("SELECT count(*) FROM pg_class WHERE relname = 'request_logs_y2024m07'") == 1)
        #expect(
            try await db.scalar(
                "SELECT count(*) FROM request_logs WHERE request_id IN ('dropped-now', 'dropped-streamed')") == 2)
    }

    struct ClientGone: Error {}

    /// The second case found by a review: a key lookup of the body cancelled by
    /// `statement_timeout` was taken for the COPY's own cancellation, and the store waited
    /// for the rest of a body that never came.
    @Test(
        "a body that fails mid-way stores nothing and leaves the connection usable, whatever its error",
        arguments: [
            ClientGone() as any Error,
            PostgresError(
                kind: .query, sqlState: SQLState.queryCanceled, message: "canceling statement due to statement timeout"),
        ])
    func failedBodyStoresNothing(_ failure: any Error) async throws {
        let db = try await TestDatabase.shared("ingest-stream")
        try await db.prepareBilling(users: 5)
        let account = try await db.syntheticAccount(4)
        let (handOff, stored) = Self.start(PostgresIngestRepository(pool: db.pool))
        await handOff.send(.lines([Self.line("gone-1", account: account)]))
        #expect(try await Self.waitForCopies(db, rows: 1))
        await handOff.send(.failed(failure))
        // Watched from aside: a store that waits for the rest of the body never returns.
        let ended = Mutex<String?>(nil)
        Task {
            do {
                _ = try await stored.value
                ended.withLock { $0 = "stored" }
            } catch {
                ended.withLock { $0 = "\(type(of: error))" }
            }
        }
        #expect(
            try await waitUntil(timeout: .seconds(30)) { ended.withLock { $0 != nil } },
            "the store still waits for the rest of a body that failed")
        #expect(ended.withLock { $0 } == "\(type(of: failure))")
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'gone-%'") == 0)
        #expect(try await db.scalar("SELECT count(*) FROM pending_charges WHERE user_id = $1", [account.user]) == 0)
        // Every pooled connection was returned outside a transaction.
        for _ in 0..<db.pool.size {
            #expect(try await db.pool.withConnection { $0.inTransaction } == false)
        }
    }

    @Test(
        "a batch stored whole deadlocks with a streamed one holding its ids in another order; when it is the one aborted, it is written again"
    )
    func wholeBatchDeadlockedIsWrittenAgain() async throws {
        let db = try await TestDatabase.shared("ingest-stream")
        try await db.prepareBilling(users: 6)
        let account = try await db.syntheticAccount(6)
        let (x, y) = (Self.line("mix-x", account: account), Self.line("mix-y", account: account))
        // PostgreSQL checks a waiting session for a deadlock once, deadlock_timeout after its wait
        // began, and aborts the session whose check finds the cycle. The whole batch waits first
        // and checks after 5 s, once the cycle is closed; the streamed one would after 60 s.
        let (streamed, streamedStored) = Self.start(
            PostgresIngestRepository(pool: db.pool(deadlockTimeout: "60s", size: 1)))
        // y and 1,000 more lines: inserted (COPY's block of 1,000) before the part ends.
        await streamed.send(.lines([y] + (1...1_000).map { Self.line("mix-s-\($0)", account: account) }))
        #expect(try await Self.waitForCopies(db, rows: 1_001))
        // The whole batch inserts x, then waits for the streamed one's y...
        let whole = Task {
            try await PostgresIngestRepository(pool: db.pool(deadlockTimeout: "5s", size: 1)).store(
                [x, y], rejects: [], totalLines: 2, tid: TraceID.generate(), source: "test")
        }
        #expect(
            try await Self.waitForCopyWaitingOnLock(db))
        // ...and the streamed one now waits for the whole batch's x: the whole batch is aborted.
        await streamed.send(.lines([x] + (1...1_000).map { Self.line("mix-t-\($0)", account: account) }))
        await streamed.send(.end(rejects: [], totalLines: 2_002))
        let results = [try await streamedStored.value, try await whole.value]
        #expect(results.map(\.accepted) == [2_002, 0])
        #expect(results.map(\.duplicates) == [0, 2])
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'mix-%'") == 2_002)
    }

    @Test("an upload slower than statement_timeout: the COPY is cancelled, the batch stored whole once it is in")
    func slowUploadStoresWhole() async throws {
        let created = try await TestDatabase.create("ingest-stream-timeout")
        try await created.prepareBilling(users: 1)
        try await created.pool.withConnection { connection in
            try connection.execute(
                "ALTER DATABASE \(connection.quoteIdentifier(created.name)) SET statement_timeout = '300ms'")
        }
        let db = created.reopened(poolSize: 4)  // connections opened after the setting
        let account = try await db.syntheticAccount(1)
        let (handOff, stored) = Self.start(PostgresIngestRepository(pool: db.pool))
        await handOff.send(.lines([Self.line("slow-1", account: account)]))
        try await Task.sleep(for: .milliseconds(800))
        await handOff.send(.lines([Self.line("slow-2", account: account)]))
        await handOff.send(.end(rejects: [], totalLines: 2))
        let result = try await stored.value
        #expect(result.accepted == 2)
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE batch_id = $1", [result.batchID]) == 2)
        #expect(try await db.scalar("SELECT used_quota FROM user_balances WHERE id = $1", [account.user]) == 200)
    }

    @Test("two batches with the same ids in opposite orders deadlock; the one PostgreSQL aborts is stored whole")
    func oppositeOrdersDeadlockAndRecover() async throws {
        let db = try await TestDatabase.shared("ingest-stream")
        try await db.prepareBilling(users: 5)
        let account = try await db.syntheticAccount(5)
        let (x, y) = (Self.line("cross-x", account: account), Self.line("cross-y", account: account))
        // COPY inserts rows 1,000 at a time (its multi-insert buffer): a contested line followed
        // by 1,000 others of its own is in the table, and its index, before the part ends.
        func part(_ contested: PricedLine, _ name: String) -> BatchPart {
            .lines([contested] + (1...1_000).map { Self.line("cross-\(name)-\($0)", account: account) })
        }
        let repository = PostgresIngestRepository(pool: db.pool)
        let (first, firstStored) = Self.start(repository)
        let (second, secondStored) = Self.start(repository)
        await first.send(part(x, "a"))
        #expect(try await Self.waitForCopies(db, rows: 1_001))
        await second.send(part(y, "b"))
        #expect(try await Self.waitForCopies(db, count: 2, rows: 1_001))
        // The first now waits for the second's uncommitted y, and the second for the first's x.
        await first.send(part(y, "c"))
        #expect(
            try await Self.waitForCopyWaitingOnLock(db))
        await second.send(part(x, "d"))
        await first.send(.end(rejects: [], totalLines: 2_002))
        await second.send(.end(rejects: [], totalLines: 2_002))
        let results = [try await firstStored.value, try await secondStored.value]
        #expect(results.map(\.accepted).sorted() == [2_000, 2_002])
        #expect(results.map(\.duplicates).sorted() == [0, 2])
        #expect(try await db.scalar("SELECT count(*) FROM request_logs WHERE request_id LIKE 'cross-%'") == 4_002)
        #expect(try await db.scalar("SELECT used_quota FROM user_balances WHERE id = $1", [account.user]) == 400_200)
    }
}
