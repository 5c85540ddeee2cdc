import Foundation
import TallyCore

/// The instances' side of a run: serving the gateway, calling the database, crashing. Each
/// instance runs the real ``LeaseMachine`` (TallyCore) inside a shell that does what `HoldBook`
/// (Sources/TallyServer/Services/HoldBook.swift) does with one stripe: it feeds the machine
/// events with the instance's own clock and runs the actions it returns against the simulated
/// database; `LeaseUpkeepService` (Sources/TallyServer/Services/EnforcementServices.swift) is `upkeep`.
extension Simulation {
    func serve(_ request: GatewayRequest, exchange: Int, on index: Int) {
        guard instances[index].serving else {
            // Nobody listens on the port (down, or still registering): refused at once.
            log("i\(index) is down: exchange \(exchange) refused")
            scheduler.schedule(.answer(exchange: exchange, .unavailable), after: latency())
            return
        }
        switch request {
        case .ingest(_, let lines):
            call(.store(lines), from: index, reply: .http(exchange: exchange))
        case .authorize(let hold):
            let ticket = instances[index].newTicket()
            instances[index].tickets[ticket] = (exchange, hold)
            step(index, .cut(ticket, hold))
        case .release(let requestID):
            // EnforcementController.release flushes the journal first (async holds).
            let ticket = instances[index].newTicket()
            instances[index].flushes[ticket] = (exchange, requestID)
            step(index, .flush(ticket))
        }
    }

    func call(_ request: DatabaseCall.Request, from index: Int, reply: DatabaseCall.Reply) {
        let call = DatabaseCall(
            instance: index, incarnation: instances[index].incarnation, request: request,
            reply: reply)
        scheduler.schedule(.database(call), after: latency())
    }

    /// An answer from the database reaches the instance that asked (unless it died meanwhile).
    func deliver(_ response: DatabaseResponse, for call: DatabaseCall) {
        let index = call.instance
        guard instances[index].alive, instances[index].incarnation == call.incarnation else { return }
        switch (call.reply, response) {
        case (.http(let exchange), .stored(let result)): reply(exchange, .stored(result))
        case (.refusal(let exchange, let refusal), .storedHold(let stored)): reply(exchange, .hold(stored ?? refusal))
        case (.refusal(let exchange, _), _): reply(exchange, .unavailable)
        case (.http(let exchange), .released): reply(exchange, .released)
        case (.http(let exchange), _): reply(exchange, .unavailable)
        case (.refill(let round), .granted(let grants)): step(index, .refillGranted(round: round, grants))
        case (.refill(let round), let failure):
            if case .lease(let stale, _) = call.request, failure == .failed(.notRegistered) {
                reregister(index, replacing: stale)
            }
            step(index, .refillFailed(round: round))
        case (.journal(let batch), .journaled(let outcomes)): step(index, .journalCommitted(batch: batch, outcomes))
        case (.journal(let batch), .failed(.notRegistered)): step(index, .journalRefused(batch: batch))
        case (.journal(let batch), .failed(.rolledBack)): step(index, .journalRolledBack(batch: batch))
        case (.journal(let batch), _): step(index, .journalFailed(batch: batch))
        case (.holdIDs, .holdIDs(let first)): step(index, .holdIDsGranted(first: first, count: SimDatabase.holdIDBlock))
        case (.holdIDs, _): step(index, .holdIDsFailed)
        case (.renewal(let name, let startedAt), .renewed(true)): announce(index, name, renewedAt: startedAt)
        case (.renewal(let name, _), .renewed(false)): reregister(index, replacing: name)
        case (.renewal, _): step(index, .renewalFailed)
        case (.registration(let name, let startedAt), .done): registered(index, name, at: startedAt)
        case (.registration(let name, _), _): registrationFailed(index, name)
        default: break
        }
    }

    // MARK: The lease machine's shell

    /// The instance's clock, in seconds: the database's, moved ahead by its clock jumps.
    func clock(of index: Int) -> Double { Double(scheduler.now + instances[index].clockOffset) / 1_000 }

    /// Hands the instance's machine one event and runs what it asks for.
    func step(_ index: Int, _ event: LeaseEvent) {
        steppedMachines.insert(index)
        let actions = instances[index].machine.handle(event, at: clock(of: index))
        for action in actions { run(action, on: index) }
    }

    private func run(_ action: LeaseAction, on index: Int) {
        switch action {
        case .answer(let ticket, let answer):
            guard let (exchange, hold) = instances[index].tickets.removeValue(forKey: ticket) else { return }
            switch answer {
            case .outcome(let refusal) where refusal.isShortOfUnits:
                // HoldBook.reserve: a refusal looks for a hold stored under the request id first.
                let lookup = DatabaseCall.Request.storedHold(hold.requestID, scope: hold.scope)
                call(lookup, from: index, reply: .refusal(exchange: exchange, refusal))
            case .outcome(let outcome): reply(exchange, .hold(outcome))
            case .failed: reply(exchange, .unavailable)
            }
        case .flushed(let ticket):
            guard let (exchange, requestID) = instances[index].flushes.removeValue(forKey: ticket) else { return }
            call(.release(requestID), from: index, reply: .http(exchange: exchange))
        case .refill(let round, let instance, let wants):
            call(.lease(instance, wants), from: index, reply: .refill(round))
        case .journal(let batch, let instance, let holds):
            call(.journal(instance, holds), from: index, reply: .journal(batch))
        case .giveBack(let instance, let amounts): call(.returnLeases(instance, amounts), from: index, reply: .none)
        case .fetchHoldIDs: call(.holdIDBlock, from: index, reply: .holdIDs)
        case .renewRegistration: renew(index)
        case .wake(let at):
            let due = SimTime((at * 1_000).rounded(.up)) - instances[index].clockOffset
            scheduler.schedule(.machine(instance: index, incarnation: instances[index].incarnation, .clock), at: due)
        }
    }

    /// A machine event from the instance's own timers and listener, unless it died meanwhile.
    func machineEvent(_ index: Int, incarnation: Int, _ event: LeaseEvent) {
        guard instances[index].alive, instances[index].incarnation == incarnation else { return }
        step(index, event)
    }

    // MARK: Registration (HoldBook.start, renew, reregister)

    private func register(_ index: Int, _ name: String) {
        call(.register(name), from: index, reply: .registration(name, startedAt: clock(of: index)))
    }

    private func registered(_ index: Int, _ name: String, at startedAt: Double) {
        if !instances[index].serving {
            instances[index].serving = true
            log("i\(index) serves as \(name)")
            scheduler.schedule(.upkeep(instance: index, incarnation: instances[index].incarnation), after: 1_000)
        }
        announce(index, name, renewedAt: startedAt)
    }

    /// A first registration that failed is tried again a second later under a new name (the
    /// process starts again; the failed one may have committed, and then expires); a later one
    /// leaves the machine unable to cut until a renewal registers it.
    private func registrationFailed(_ index: Int, _ name: String) {
        guard instances[index].registration == name else { return }
        if instances[index].serving {
            step(index, .registered(instance: name, validUntil: 0))
        } else {
            scheduler.schedule(.retryStart(instance: index, incarnation: instances[index].incarnation), after: 1_000)
        }
    }

    func retryStart(_ index: Int, incarnation: Int) {
        guard instances[index].alive, instances[index].incarnation == incarnation else { return }
        instances[index].registrations += 1
        register(index, instances[index].registration)
    }

    /// Holds are cut until a second before the registration (renewed at `renewedAt`) expires,
    /// unless it was replaced meanwhile.
    private func announce(_ index: Int, _ name: String, renewedAt: Double) {
        guard instances[index].registration == name else { return }
        let validUntil = renewedAt + Double(SimDatabase.registrationTTL) / 1_000 - 1
        step(index, .registered(instance: name, validUntil: validUntil))
    }

    func renew(_ index: Int) {
        let name = instances[index].registration
        call(.renew(name), from: index, reply: .renewal(name, startedAt: clock(of: index)))
    }

    /// The registration `stale` was reaped, and every lease with it: register anew (once).
    private func reregister(_ index: Int, replacing stale: String) {
        guard instances[index].registration == stale else { return }
        instances[index].registrations += 1
        log("i\(index): \(stale) was reaped, registers as \(instances[index].registration)")
        register(index, instances[index].registration)
    }

    /// Every second: renew every third round, give back idle leases, reap dead instances,
    /// expire holds (the hold sweeper); until the gateway is done.
    func upkeep(_ index: Int, incarnation: Int) {
        guard instances[index].alive, instances[index].incarnation == incarnation else { return }
        instances[index].upkeepRounds += 1
        if instances[index].upkeepRounds % 3 == 0 { renew(index) }
        step(index, .idleTick)
        call(.reap, from: index, reply: .none)
        call(.expireHolds, from: index, reply: .none)
        guard !gateway.isIdle else { return }
        scheduler.schedule(.upkeep(instance: index, incarnation: incarnation), after: 1_000)
    }

    /// A notification reaches every listening instance; a lost one makes the listener
    /// reconnect, and a reconnected listener returns every lease (it may have missed others).
    func broadcast(_ notifications: [SimNotification]) {
        for notification in notifications {
            let event: LeaseEvent =
                switch notification {
                case .leaseWanted(let account): .leaseWanted(account)
                case .overdrawn(let account): .overdrawn(account)
                }
            for index in instances.indices where instances[index].serving {
                let incarnation = instances[index].incarnation
                if strikes(configuration.faults.lostNotification) {
                    log("fault: \(notification) to i\(index) is lost")
                    if random.chance(0.5) {
                        scheduler.schedule(
                            .machine(instance: index, incarnation: incarnation, .returnAll),
                            after: latency())
                    }
                    continue
                }
                let copies = strikes(configuration.faults.duplicateNotification) ? 2 : 1
                for _ in 0..<copies {
                    scheduler.schedule(.machine(instance: index, incarnation: incarnation, event), after: latency())
                }
            }
        }
    }

    // MARK: Crashes

    /// kill -9: memory, calls in flight and their answers are gone; it comes back later as a
    /// new incarnation with a new registration.
    func crash(_ index: Int) {
        stats.crashes += 1
        instances[index].alive = false
        instances[index].serving = false
        instances[index].incarnation += 1
        log("fault: i\(index) is killed")
        scheduler.schedule(.restart(instance: index), after: random.int(100...5_000))
    }

    func start(_ index: Int) {
        instances[index].restart(policy: configuration.policy)
        log("i\(index) starts as \(instances[index].registration)")
        register(index, instances[index].registration)
    }
}

/// One simulated Tally process: it serves HTTP and calls the database until it is killed;
/// restarted, it is a new incarnation with nothing in memory, and answers meant for the old
/// one are dropped.
struct SimInstance {
    let index: Int
    var incarnation = 0
    var alive = false
    /// Registered once since it started: it listens on its port.
    var serving = false
    /// Its clock against the database's (clock jumps move it ahead).
    var clockOffset: SimTime = 0
    /// Stopped until then: events for it wait.
    var pausedUntil: SimTime = 0
    var machine: LeaseMachine
    /// Registrations taken by this incarnation (a reaped one is replaced).
    var registrations = 0
    var upkeepRounds = 0
    /// The gateway exchanges waiting for a hold, and the releases waiting for a flush.
    /// The gateway exchange each cut answers, and its request.
    var tickets: [LeaseTicket: (exchange: Int, hold: HoldRequest)] = [:]
    var flushes: [LeaseTicket: (exchange: Int, requestID: String)] = [:]
    private var nextTicket: UInt64 = 0

    init(index: Int, policy: LeasePolicy) {
        self.index = index
        machine = LeaseMachine(policy: policy)
    }

    var registration: String { "i\(index).\(incarnation).\(registrations)" }

    mutating func restart(policy: LeasePolicy) {
        alive = true
        serving = false
        machine = LeaseMachine(policy: policy)
        registrations = 0
        upkeepRounds = 0
        tickets = [:]
        flushes = [:]
    }

    mutating func newTicket() -> LeaseTicket {
        nextTicket += 1
        return LeaseTicket(nextTicket)
    }
}

/// A call from an instance to the database: what it asks, and where the answer goes.
struct DatabaseCall {
    enum Request {
        case store([SimDatabase.Line])
        case register(String)
        case renew(String)
        case lease(String, [AccountUnits])
        case journal(String, [JournaledHold])
        case returnLeases(String, [AccountUnits])
        case holdIDBlock
        /// The hold stored under a request id of a user (before a refusal goes out).
        case storedHold(String, scope: RequestScope)
        case release(String)
        case expireHolds
        case reap
    }

    enum Reply {
        /// Answers this HTTP exchange of the gateway.
        case http(exchange: Int)
        /// Answers this exchange's refused authorization: with the stored hold, if there is one.
        case refusal(exchange: Int, HoldOutcome)
        /// Answers the machine's refill round, journal batch, hold-id request.
        case refill(Int)
        case journal(Int)
        case holdIDs
        /// A renewal or registration of `name` started at `startedAt` (the instance's clock).
        case renewal(String, startedAt: Double)
        case registration(String, startedAt: Double)
        /// Nobody waits for the answer.
        case none
    }

    let instance: Int
    let incarnation: Int
    let request: Request
    let reply: Reply
}

enum DatabaseResponse: Equatable {
    case stored(SimDatabase.StoreResult)
    case granted([LeaseGrant])
    case journaled([JournalOutcome])
    case holdIDs(first: Int64)
    case storedHold(HoldOutcome?)
    case renewed(Bool)
    case released
    case done
    case failed(SimDatabaseError)
}
