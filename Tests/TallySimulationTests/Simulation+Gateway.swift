import TallyCore

/// The gateway's side of a run: its moves, its HTTP exchanges, and the faults it injects.
extension Simulation {
    func gatewayMove() {
        guard gateway.movesLeft > 0 else { return windDown() }
        gateway.movesLeft -= 1
        injectFaults()
        switch random.below(20) {
        case 0..<6: authorizeRequest()
        case 6..<10: finishRunningRequest()
        case 10: releaseRunningRequest()
        case 11: finishRequest()
        case 12..<18: if let batch = gateway.takeBatch() { send(batch, after: 0) }
        default: resendAcknowledgedBatch()
        }
        // Now and then a quiet spell: registrations lapse, leases idle, holds expire.
        let pause = random.chance(0.02) ? random.int(2_000...25_000) : random.int(1...50)
        scheduler.schedule(.gateway, after: pause)
    }

    /// After the last move: every running request finishes and every line goes out.
    func windDown() {
        for requestID in gateway.running.keys.sorted() { finish(requestID) }
        if let batch = gateway.takeBatch() { send(batch, after: 0) }
    }

    /// A new request asks for a hold of what it may cost at most.
    private func authorizeRequest() {
        let user = Int64(1 + random.below(configuration.users))
        let requestID = gateway.newRequestID()
        let hold = HoldRequest(
            requestID: requestID, userID: user, tokenID: Self.token(of: user), model: "m",
            amount: random.int(configuration.cost), tid: "t-\(requestID)")
        gateway.authorizing[requestID] = (hold, 1)
        send(.authorize(hold), after: 0)
    }

    /// A request that ran on its hold finishes: usually within the hold, sometimes beyond it
    /// (an overrun: charged in full all the same).
    private func finishRunningRequest() {
        guard !gateway.running.isEmpty else { return }
        finish(gateway.running.keys.sorted()[random.below(gateway.running.count)])
    }

    private func finish(_ requestID: String) {
        guard let (hold, held) = gateway.running.removeValue(forKey: requestID) else { return }
        let cost = random.chance(0.8) ? random.int(0...held) : held + random.int(1...max(1, held))
        gateway.finish(SimDatabase.Line(requestID: requestID, userID: hold.userID, tokenID: hold.tokenID, cost: cost))
        log("gateway: \(requestID) finished on its hold of \(held), cost \(cost)")
    }

    /// A request that failed upstream: its hold is released (once; a lost release leaves the
    /// hold to expire).
    private func releaseRunningRequest() {
        guard !gateway.running.isEmpty else { return }
        let requestID = gateway.running.keys.sorted()[random.below(gateway.running.count)]
        gateway.running[requestID] = nil
        send(.release(requestID: requestID), after: 0)
    }

    /// A request ran upstream without asking first (never authorized): its line is charged in full.
    private func finishRequest() {
        let user = Int64(1 + random.below(configuration.users))
        let line = SimDatabase.Line(
            requestID: gateway.newRequestID(), userID: user, tokenID: Self.token(of: user),
            cost: random.int(configuration.cost))
        gateway.finish(line)
        log("gateway: \(line.requestID) finished without a hold, user \(user), cost \(line.cost)")
    }

    /// A gateway that lost track (its own restart) sends an acknowledged batch again: it must
    /// store and charge nothing.
    private func resendAcknowledgedBatch() {
        guard !gateway.ackedBatches.isEmpty else { return }
        let batch = gateway.ackedBatches.keys.sorted()[random.below(gateway.ackedBatches.count)]
        send(.ingest(batch: batch, lines: gateway.ackedBatches[batch]!), after: 0)
    }

    private func injectFaults() {
        let faults = configuration.faults
        let alive = instances.filter(\.alive).map(\.index)
        if strikes(faults.crash), !alive.isEmpty { crash(random.pick(alive)) }
        if strikes(faults.pause), !alive.isEmpty {
            let index = random.pick(alive)
            instances[index].pausedUntil = scheduler.now + random.int(1_000...30_000)
            log("fault: i\(index) stops until \(instances[index].pausedUntil) ms")
        }
        if strikes(faults.clockJump) {
            let index = random.below(instances.count)
            let jump = random.int(1_000...30_000)
            instances[index].clockOffset += jump
            log("fault: i\(index)'s clock jumps \(jump) ms ahead")
        }
        if strikes(faults.outage) {
            databaseDownUntil = scheduler.now + random.int(100...5_000)
            log("fault: the database is down until \(databaseDownUntil) ms")
        }
    }

    /// Sends `request` to a random instance after `delay`; a lost request or answer ends in the
    /// gateway's timeout, a duplicated one arrives twice.
    func send(_ request: GatewayRequest, after delay: SimTime) {
        let exchange = gateway.open(request)
        let instance = random.below(instances.count)
        log("gateway: exchange \(exchange) → i\(instance): \(request)")
        scheduler.schedule(.timeout(exchange: exchange), after: delay + 5_000)
        if strikes(configuration.faults.lostHTTP) {
            log("fault: exchange \(exchange)'s request is lost")
            return
        }
        scheduler.schedule(.http(instance: instance, exchange: exchange, request), after: delay + latency())
        if strikes(configuration.faults.duplicateHTTP) {
            stats.duplicates += 1
            scheduler.schedule(.http(instance: instance, exchange: exchange, request), after: delay + latency())
        }
    }

    /// An instance answers exchange `exchange` (the answer may be lost on the way).
    func reply(_ exchange: Int, _ answer: GatewayAnswer) {
        if strikes(configuration.faults.lostHTTP) {
            log("fault: exchange \(exchange)'s answer is lost")
            return
        }
        scheduler.schedule(.answer(exchange: exchange, answer), after: latency())
    }

    func answered(_ exchange: Int, _ answer: GatewayAnswer) {
        guard let request = gateway.close(exchange) else { return }
        log("gateway: exchange \(exchange) answered \(answer)")
        switch (request, answer) {
        case (.ingest, .stored):
            gateway.acknowledge(request)
            truth.acknowledged(request)
        case (.authorize(let hold), .hold(let outcome)): authorized(hold, outcome)
        case (.release, _): break
        default: retry(request)
        }
        if gateway.movesLeft == 0 { windDown() }
    }

    /// Unanswered or 503: a batch is sent again until stored, an authorization a few times
    /// (then the request is given up), a release not at all (its hold expires).
    func retry(_ request: GatewayRequest) {
        switch request {
        case .ingest: send(request, after: random.int(10...500))
        case .authorize(let hold):
            guard let attempts = gateway.authorizing[hold.requestID]?.attempts, attempts < 3 else {
                gateway.authorizing[hold.requestID] = nil
                log("gateway: \(hold.requestID) given up")
                return
            }
            gateway.authorizing[hold.requestID]?.attempts = attempts + 1
            send(request, after: random.int(10...500))
        case .release: break
        }
    }

    /// A hold (new, or found under the request id) lets the request run; in sync mode it must
    /// be in the database by now (docs/enforcement.md: nothing answered is ever missing).
    private func authorized(_ hold: HoldRequest, _ outcome: HoldOutcome) {
        guard gateway.authorizing.removeValue(forKey: hold.requestID) != nil else { return }
        let held: Int64, holdID: Int64
        switch outcome {
        case .held(let id, let amount): (holdID, held) = (id, amount)
        case .duplicate(let id, let amount, let status) where status == "held": (holdID, held) = (id, amount)
        default: return
        }
        if configuration.policy.commit == .sync, database.holds[hold.requestID]?.id != holdID {
            truth.problems.append(
                "\(hold.requestID) was answered \(outcome) in sync mode, but the database holds "
                    + (database.holds[hold.requestID].map { "hold \($0.id)" } ?? "none"))
        }
        gateway.running[hold.requestID] = (hold, held)
    }
}
