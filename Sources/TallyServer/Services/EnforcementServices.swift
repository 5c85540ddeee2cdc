import Dispatch
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import TallyCore
import TallyPostgres
import TallyStore

/// Returns expired holds to their accounts (every second), deletes holds closed more than an
/// hour ago (they answer authorize retries and late releases until then), and reports the open holds as gauges (`tally_holds_open`, `tally_holds_open_units`).
/// Safe on every instance at once: holds are claimed with SKIP LOCKED.
struct HoldSweeperService: Service {
    let holds: any HoldRepository
    let interval: Duration
    let logger: Logger

    static let expiredPerRound = 5_000
    static let closedRetentionSeconds = 3_600
    static let purgedPerRound = 50_000
    /// The open-hold gauges scan every open hold (a parallel scan under load): every 10th round.
    static let gaugeEveryRounds = 10
    static let openGauge = Gauge(label: "tally_holds_open")
    static let openUnitsGauge = Gauge(label: "tally_holds_open_units")
    static let expiredCounter = Counter(label: "tally_holds_expired_total")

    func run() async throws {
        var round = 0
        await runPeriodically(every: interval, logger: logger, failure: "hold sweep failed") {
            defer { round += 1 }
            try await sweep(gauges: round % Self.gaugeEveryRounds == 0)
        }
    }

    func sweep(gauges: Bool = true) async throws {
        var expired = 0
        repeat {
            expired = try await holds.expireDue(limit: Self.expiredPerRound)
            if expired > 0 {
                Self.expiredCounter.increment(by: expired)
                logger.info("expired holds returned", metadata: ["holds": "\(expired)"])
            }
        } while expired == Self.expiredPerRound
        _ = try await holds.purgeClosed(olderThan: Self.closedRetentionSeconds, limit: Self.purgedPerRound)
        guard gauges else { return }
        let open = try await holds.openTotals()
        Self.openGauge.record(open.count)
        Self.openUnitsGauge.record(open.units)
    }
}

/// Keeps this instance's leases (``HoldBook``): renews its registration every 3 s, gives
/// leases unused for 30 s back to their accounts, and returns the leases of instances that
/// stopped renewing (any instance may; they are claimed with SKIP LOCKED). On graceful
/// shutdown — after the HTTP server stopped taking requests — journals what is queued and
/// returns every lease.
struct LeaseService: Service {
    let book: HoldBook
    let logger: Logger

    static let reapedCounter = Counter(label: "tally_lease_instances_reaped_total")
    static let leasedGauge = Gauge(label: "tally_leased_units")
    static let journalGauge = Gauge(label: "tally_hold_journal_queue")

    func run() async throws {
        recordLevels()
        var round = 0
        await runPeriodically(every: .seconds(1), logger: logger, failure: "lease upkeep failed") {
            round += 1
            try await upkeep(renewing: round % 3 == 0)
        }
        // Not cancelled with the service (a shutdown past its deadline cancels every service):
        // returning the leases is what lets other instances use these accounts at once, rather
        // than after this instance's registration expires. `retire` starts no try past its
        // patience (10 s); one under way may wait longer, for a row lock or a connection.
        let book = self.book
        let retired = Task { try await book.retire() }
        do {
            if try await !retired.value {
                logger.warning("holds still wait for the journal; this instance's leases return when it is reaped")
            }
        } catch {
            logger.warning(
                "could not return this instance's leases; they return when it is reaped",
                metadata: ["error": "\(error)"])
        }
    }

    private func recordLevels() {
        let levels = book.levels
        Self.leasedGauge.record(levels.leasedUnits)
        Self.journalGauge.record(levels.journalQueue)
    }

    private func upkeep(renewing: Bool) async throws {
        recordLevels()
        if renewing { try await book.renew() }
        try await book.returnIdleLeases()
        let reaped = try await book.reapDeadInstances()
        if reaped > 0 {
            Self.reapedCounter.increment(by: reaped)
            logger.warning(
                "returned the leases of instances that stopped renewing", metadata: ["instances": "\(reaped)"])
        }
    }
}

/// Listens for `tally_changes` (a ``ChangeNotice`` sent with every change of a key, user, group
/// or channel, from any instance or the CLI, and by settlement) and hands each to `onChange`.
/// On its own connection, outside the pool, on a thread of its own since waiting for a
/// notification blocks. It opens `listening` once it first listens: the server answers nothing
/// before that, so nothing is cached or leased that a change could have passed by unheard.
/// After a lost connection it reconnects and reports `.everything`, since it may have missed
/// some; so is a payload it cannot read (a newer instance's, say).
struct ChangeListenerService: Service {
    let databaseURL: String
    let listening: StartupGate
    let onChange: @Sendable (ChangeNotice) -> Void
    let logger: Logger
    /// After this long without a notification the connection is asked a `SELECT 1`: a
    /// connection that a firewall, NAT or failover dropped without a word only polls quiet, and
    /// every change sent meanwhile would be missed unheard. TCP keepalives and a user timeout
    /// (`livenessOptions`) make the ask fail within about half a minute on such a connection.
    var quietPing: Duration = .seconds(10)

    /// The listener's connection parameters: named in `pg_stat_activity`, and a dead peer found
    /// within about 25 s idle (keepalives) or 30 s of unanswered sends (user timeout).
    static let livenessOptions: KeyValuePairs<String, String> = [
        "application_name": "tally-change-listener", "keepalives": "1", "keepalives_idle": "10",
        "keepalives_interval": "5", "keepalives_count": "3", "tcp_user_timeout": "30000",
    ]

    func run() async throws {
        let stop = StopFlag()
        let thread = DispatchQueue(label: "tally.change-listener")
        let finished = AsyncStream<Void>.makeStream()
        thread.async {
            listen(until: stop)
            finished.continuation.finish()
        }
        // Cancelled (a failed start cancels the group) or shut down, the thread stops either way.
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                for await _ in finished.stream {}
            } onGracefulShutdown: {
                stop.raise()
            }
        } onCancel: {
            stop.raise()
        }
    }

    private func listen(until stop: StopFlag) {
        var connected = false
        while !stop.isRaised {
            do {
                let connection = try PostgresConnection(url: databaseURL, options: Self.livenessOptions)
                try connection.execute("LISTEN tally_changes")
                if connected { onChange(.everything) } else { listening.open() }
                connected = true
                var heard = ContinuousClock.now
                while !stop.isRaised {
                    let notifications = try connection.waitForNotifications(timeout: 0.5)
                    for notification in notifications {
                        onChange(ChangeNotice(payload: notification.payload) ?? .everything)
                    }
                    if !notifications.isEmpty {
                        heard = .now
                    } else if ContinuousClock.now - heard >= quietPing {
                        try connection.execute("SELECT 1")
                        heard = .now
                    }
                }
            } catch {
                RepeatedWarningLog.shared.warning(
                    "change listener lost its connection; retrying", metadata: ["error": "\(error)"], to: logger)
                Thread.sleep(forTimeInterval: 1)
            }
        }
    }
}

/// A flag one thread raises and another polls.
final class StopFlag: Sendable {
    private let raised = Atomic<Bool>(false)
    var isRaised: Bool { raised.load(ordering: .relaxed) }
    func raise() { raised.store(true, ordering: .relaxed) }
}
