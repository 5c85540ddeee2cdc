import TallyCore

enum SimEvent {
    /// The gateway's next move.
    case gateway
    /// An HTTP request reaches instance `instance`.
    case http(instance: Int, exchange: Int, GatewayRequest)
    /// An answer (or a refused connection) reaches the gateway.
    case answer(exchange: Int, GatewayAnswer)
    /// The gateway stops waiting for an exchange.
    case timeout(exchange: Int)
    case database(DatabaseCall)
    case databaseAnswer(DatabaseCall, DatabaseResponse)
    case restart(instance: Int)
    /// An instance's timer or listener hands its lease machine an event.
    case machine(instance: Int, incarnation: Int, LeaseEvent)
    /// An instance's lease upkeep round (every second).
    case upkeep(instance: Int, incarnation: Int)
    /// An instance whose first registration failed tries again.
    case retryStart(instance: Int, incarnation: Int)

    /// The instance that handles the event, if one does.
    var instance: Int? {
        switch self {
        case .gateway, .answer, .timeout, .database, .restart: nil
        case .http(let instance, _, _), .machine(let instance, _, _), .upkeep(let instance, _),
            .retryStart(let instance, _):
            instance
        case .databaseAnswer(let call, _): call.instance
        }
    }
}

/// A failed invariant, with where the run was.
struct SimViolation: Error, Sendable, CustomStringConvertible {
    let seed: UInt64
    let step: Int
    let time: SimTime
    let message: String
    let trace: [String]

    var description: String {
        "seed \(seed), step \(step), t=\(time) ms: \(message)"
    }
}

/// A deterministic run of the money state machines: a seeded scheduler drives the gateway,
/// several instances and the simulated database through random latencies and injected
/// faults, and the invariants are checked after every step (`SimInvariants`).
final class Simulation {
    let seed: UInt64
    let configuration: SimConfiguration
    var random: SimRandom
    var scheduler = Scheduler<SimEvent>()
    var database = SimDatabase()
    var instances: [SimInstance]
    var gateway: SimGateway
    var truth = SimTruth()
    var databaseDownUntil: SimTime = -1
    /// A transaction committed in this step: the books are checked again.
    var databaseChanged = true
    /// The instances whose lease machine took an event in this step.
    var steppedMachines: Set<Int> = []
    private(set) var steps = 0
    /// The last events, for a failure report (kept only when `tracing`).
    let tracing: Bool
    private(set) var trace: [String] = []
    var stats = SimStats()

    /// A run ends when nothing is left to do; one that goes on this long is a livelock.
    static let maxSteps = 200_000

    init(seed: UInt64, tracing: Bool = false, plantedBug: PlantedBug? = nil) {
        self.seed = seed
        self.tracing = tracing
        random = SimRandom(seed: seed)
        database.plantedBug = plantedBug
        configuration = SimConfiguration.draw(&random)
        let policy = configuration.policy
        instances = (0..<configuration.instances).map { SimInstance(index: $0, policy: policy) }
        gateway = SimGateway(moves: configuration.moves)
        for user in 1...Int64(configuration.users) {
            let quota = random.int(configuration.initialQuota)
            database.createUser(user, quota: quota)
            truth.credits[user] = quota
            let limited = random.chance(configuration.limitedTokenShare)
            database.createToken(
                Self.token(of: user), userID: user, limited: limited,
                remainQuota: limited ? random.int(configuration.initialQuota) : 0)
        }
        for index in instances.indices { start(index) }
        scheduler.schedule(.gateway, at: 0)
    }

    static func token(of user: Int64) -> Int64 { 100 + user }

    /// Every user and token of the run.
    private(set) lazy var accounts: [SimAccount] = (1...Int64(configuration.users)).flatMap {
        [SimAccount.user($0), .token(Self.token(of: $0))]
    }

    func log(_ message: @autoclosure () -> String) {
        guard tracing else { return }
        trace.append("\(scheduler.now) ms #\(steps): \(message())")
    }

    /// Runs until nothing is left to do; throws the first violated invariant.
    func run() throws {
        log("seed \(seed): \(configuration)")
        while let event = scheduler.next() {
            steps += 1
            guard steps <= Self.maxSteps else { throw violation("no end after \(Self.maxSteps) steps (a livelock)") }
            handle(event)
            try SimInvariants.check(self)
            databaseChanged = false
            steppedMachines = []
        }
        try SimInvariants.checkFinal(self)
    }

    func violation(_ message: String) -> SimViolation {
        SimViolation(seed: seed, step: steps, time: scheduler.now, message: message, trace: trace)
    }

    private func handle(_ event: SimEvent) {
        // A stopped instance handles nothing until it resumes (its clock runs on meanwhile).
        if let index = event.instance, instances[index].pausedUntil > scheduler.now {
            return scheduler.schedule(event, at: instances[index].pausedUntil)
        }
        switch event {
        case .gateway: gatewayMove()
        case .http(let instance, let exchange, let request): serve(request, exchange: exchange, on: instance)
        case .answer(let exchange, let answer): answered(exchange, answer)
        case .timeout(let exchange):
            if let request = gateway.close(exchange) {
                log("gateway: exchange \(exchange) timed out: \(request)")
                retry(request)
                if gateway.movesLeft == 0 { windDown() }
            }
        case .database(let call): execute(call)
        case .databaseAnswer(let call, let response): deliver(response, for: call)
        case .restart(let index): start(index)
        case .machine(let index, let incarnation, let event): machineEvent(index, incarnation: incarnation, event)
        case .upkeep(let index, let incarnation): upkeep(index, incarnation: incarnation)
        case .retryStart(let index, let incarnation): retryStart(index, incarnation: incarnation)
        }
    }

    // MARK: Latency and faults

    /// A network or scheduling delay, milliseconds.
    func latency() -> SimTime { random.chance(0.05) ? random.int(20...500) : random.int(0...10) }

    func strikes(_ probability: Double) -> Bool { probability > 0 && random.chance(probability) }
}

/// Counters over a run, to show what the seeds exercised.
struct SimStats: Sendable, CustomStringConvertible {
    var batches = 0
    var crashes = 0
    var aborted = 0
    var lostCommitAnswers = 0
    var duplicates = 0

    mutating func add(_ other: SimStats) {
        batches += other.batches
        crashes += other.crashes
        aborted += other.aborted
        lostCommitAnswers += other.lostCommitAnswers
        duplicates += other.duplicates
    }

    var description: String {
        "\(batches) batches committed, \(crashes) crashes, \(aborted) aborted calls, "
            + "\(lostCommitAnswers) commits with the answer lost, \(duplicates) duplicated requests"
    }
}
