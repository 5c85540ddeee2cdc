/// What the books must show, kept from the gateway's side (what every request cost) and from
/// the commits the simulation saw, independently of how the database model computes it.
struct SimTruth {
    /// Initial quotas and top-ups per user.
    var credits: [Int64: Int64] = [:]
    /// The cost of every line stored so far, per user, as the gateway priced it.
    var charges: [Int64: Int64] = [:]
    var storedIDs: Set<String> = []
    /// Per account, what stored lines cost beyond the open hold they settled (all of it without
    /// one): the only way an account may go below zero (docs/enforcement.md, "Overruns").
    var overruns: [SimAccount: Int64] = [:]
    /// Problems seen at a commit, reported by the next check.
    var problems: [String] = []

    /// After a store committed: the lines stored for the first time add their cost, and what
    /// their open holds did not cover to the accounts' overruns; a line stored or charged twice
    /// is a problem.
    mutating func stored(_ lines: [SimDatabase.Line], before: SimDatabase, after: SimDatabase) {
        var added = 0
        for line in lines where after.rows[line.requestID] != nil && !storedIDs.contains(line.requestID) {
            storedIDs.insert(line.requestID)
            charges[line.userID, default: 0] += line.cost
            added += 1
            let hold = before.holds[line.requestID].flatMap { $0.status == .held ? $0 : nil }
            overruns[.user(line.userID), default: 0] += max(0, line.cost - (hold?.amount ?? 0))
            if before.tokens[line.tokenID]?.limited == true {
                let covered = hold?.tokenReserved == true ? hold!.amount : 0
                overruns[.token(line.tokenID), default: 0] += max(0, line.cost - covered)
            }
        }
        if after.rows.count - before.rows.count != added {
            problems.append("a store added \(after.rows.count - before.rows.count) rows for \(added) new request ids")
        }
        for line in lines where (after.charged[line.requestID] ?? 0) > 1 {
            problems.append("\(line.requestID) was charged \(after.charged[line.requestID]!) times")
        }
    }

    /// The gateway was told a batch is stored: every line of it must be.
    mutating func acknowledged(_ request: GatewayRequest) {
        guard case .ingest(let batch, let lines) = request else { return }
        for line in lines where !storedIDs.contains(line.requestID) {
            problems.append("batch \(batch) was acknowledged, but \(line.requestID) is not stored")
        }
    }
}

/// The invariants, checked after every step of a run and once more at its end.
enum SimInvariants {
    static func check(_ simulation: Simulation) throws {
        if let problem = simulation.truth.problems.first { throw simulation.violation(problem) }
        // The books change only when a transaction commits; the machines at any step.
        if simulation.databaseChanged { try checkBooks(simulation) }
        try checkMachines(simulation)
    }

    private static func checkBooks(_ simulation: Simulation) throws {
        let database = simulation.database, reservations = database.reservations()
        for (id, user) in database.users.sorted(by: { $0.key < $1.key }) {
            // balance + pending = Σ ledger, and = credits − what the stored lines cost.
            let ledger = database.ledgerBalance[id] ?? 0
            guard user.quota == ledger else {
                throw simulation.violation("user \(id): balance \(user.quota) but the ledger sums to \(ledger)")
            }
            let due = (simulation.truth.credits[id] ?? 0) - (simulation.truth.charges[id] ?? 0)
            guard user.quota == due else {
                throw simulation.violation(
                    "user \(id): balance \(user.quota) but credits less the stored lines' costs are \(due)")
            }
            try checkReserved(.user(id), reserved: user.reserved, reservations, simulation)
            try checkOverdraft(.user(id), simulation)
        }
        for (id, token) in database.tokens.sorted(by: { $0.key < $1.key }) where token.limited {
            try checkReserved(.token(id), reserved: token.reserved, reservations, simulation)
            try checkOverdraft(.token(id), simulation)
        }
    }

    /// No overdraft: `quota − reserved` (what is left to lease) never goes below zero but by
    /// the overruns of settled lines (docs/enforcement.md, "Why no interleaving can overdraw").
    private static func checkOverdraft(_ account: SimAccount, _ simulation: Simulation) throws {
        let left = simulation.database.headroom(account), overruns = simulation.truth.overruns[account] ?? 0
        guard left >= -overruns else {
            throw simulation.violation(
                "\(account) overdrawn: balance less reserved is \(left), its overruns \(overruns)")
        }
    }

    /// A machine never believes it has more than its lease rows hold: units free in memory ≤
    /// the registration's lease row, for every account (LeaseMachine's own invariant).
    private static func checkMachines(_ simulation: Simulation) throws {
        let indices = simulation.databaseChanged ? Set(simulation.instances.indices) : simulation.steppedMachines
        for index in indices.sorted() where simulation.instances[index].alive {
            let name = simulation.instances[index].machine.instance
            guard simulation.database.instances[name] != nil else { continue }
            for account in simulation.accounts {
                let free = simulation.instances[index].machine.free(account)
                let row = simulation.database.leased(account, by: name)
                guard free <= row else {
                    throw simulation.violation("\(name) has \(free) of \(account) free in memory, its lease row \(row)")
                }
            }
        }
    }

    /// reserved = Σ open holds + Σ leases.
    private static func checkReserved(
        _ account: SimAccount, reserved: Int64, _ reservations: [SimAccount: Int64],
        _ simulation: Simulation
    ) throws {
        let leased = simulation.database.leased(account), held = (reservations[account] ?? 0) - leased
        guard reserved == held + leased else {
            throw simulation.violation(
                "\(account): reserved \(reserved) but open holds reserve \(held) and leases \(leased)")
        }
    }

    /// Once the run has wound down: every line the gateway made was stored exactly once.
    static func checkFinal(_ simulation: Simulation) throws {
        simulation.databaseChanged = true
        try check(simulation)
        let gateway = simulation.gateway
        guard gateway.isIdle else {
            throw simulation.violation("the run ended with \(gateway.openBatches.count) batches unacknowledged")
        }
        let missing = gateway.costs.keys.filter { !simulation.truth.storedIDs.contains($0) }.sorted()
        guard missing.isEmpty else { throw simulation.violation("lines never stored: \(missing.prefix(5))") }
        guard simulation.database.rows.count == gateway.costs.count else {
            throw simulation.violation(
                "\(simulation.database.rows.count) rows stored for \(gateway.costs.count) lines made")
        }
    }
}
