/// What the books must show, kept from the gateway's side (what every request cost) and from
/// the commits the simulation saw, independently of how the database model computes it.
struct SimTruth {
    /// Initial quotas and top-ups per user.
    var credits: [Int64: Int64] = [:]
    /// The cost of every line stored so far, per user, as the gateway priced it.
    var charges: [Int64: Int64] = [:]
    var storedIDs: Set<String> = []
    /// Problems seen at a commit, reported by the next check.
    var problems: [String] = []

    /// After a store committed: the lines stored for the first time add their cost; a line
    /// stored or charged twice is a problem.
    mutating func stored(_ lines: [SimDatabase.Line], in database: SimDatabase, rowsBefore: Int) {
        var added = 0
        for line in lines where database.rows[line.requestID] != nil && !storedIDs.contains(line.requestID) {
            storedIDs.insert(line.requestID)
            charges[line.userID, default: 0] += line.cost
            added += 1
        }
        if database.rows.count - rowsBefore != added {
            problems.append("a store added \(database.rows.count - rowsBefore) rows for \(added) new request ids")
        }
        for line in lines where (database.charged[line.requestID] ?? 0) > 1 {
            problems.append("\(line.requestID) was charged \(database.charged[line.requestID]!) times")
        }
    }

    /// The gateway was told a batch is stored: every line of it must be.
    mutating func acknowledged(_ request: GatewayRequest) {
        guard case let .ingest(batch, lines) = request else { return }
        for line in lines where !storedIDs.contains(line.requestID) {
            problems.append("batch \(batch) was acknowledged, but \(line.requestID) is not stored")
        }
    }
}

/// The invariants, checked after every step of a run and once more at its end.
enum SimInvariants {
    static func check(_ simulation: Simulation) throws {
        if let problem = simulation.truth.problems.first { throw simulation.violation(problem) }
        let database = simulation.database
        for (id, user) in database.users.sorted(by: { $0.key < $1.key }) {
            // balance + pending = Σ ledger, and = credits − what the stored lines cost.
            let ledger = database.ledgerBalance[id] ?? 0
            guard user.quota == ledger else {
                throw simulation.violation("user \(id): balance \(user.quota) but the ledger sums to \(ledger)")
            }
            let due = (simulation.truth.credits[id] ?? 0) - (simulation.truth.charges[id] ?? 0)
            guard user.quota == due else {
                throw simulation.violation("user \(id): balance \(user.quota) but credits less the stored lines' costs are \(due)")
            }
            try checkReserved(.user(id), reserved: user.reserved, simulation)
        }
        for (id, token) in database.tokens.sorted(by: { $0.key < $1.key }) {
            try checkReserved(.token(id), reserved: token.reserved, simulation)
        }
    }

    /// reserved = Σ open holds + Σ leases.
    private static func checkReserved(_ account: SimAccount, reserved: Int64, _ simulation: Simulation) throws {
        let database = simulation.database
        let held = database.held(account), leased = database.leased(account)
        guard reserved == held + leased else {
            throw simulation.violation("\(account): reserved \(reserved) but open holds reserve \(held) and leases \(leased)")
        }
    }

    /// Once the run has wound down: every line the gateway made was stored exactly once.
    static func checkFinal(_ simulation: Simulation) throws {
        try check(simulation)
        let gateway = simulation.gateway
        guard gateway.isIdle else {
            throw simulation.violation("the run ended with \(gateway.openBatches.count) batches unacknowledged")
        }
        let missing = gateway.costs.keys.filter { !simulation.truth.storedIDs.contains($0) }.sorted()
        guard missing.isEmpty else { throw simulation.violation("lines never stored: \(missing.prefix(5))") }
        guard simulation.database.rows.count == gateway.costs.count else {
            throw simulation.violation("\(simulation.database.rows.count) rows stored for \(gateway.costs.count) lines made")
        }
    }
}
