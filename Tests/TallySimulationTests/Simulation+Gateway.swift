/// The gateway's side of a run: its moves, its HTTP exchanges, and the faults it injects.
extension Simulation {
    func gatewayMove() {
        if gateway.movesLeft > 0 {
            gateway.movesLeft -= 1
            injectFaults()
            switch random.below(10) {
            case 0..<6: finishRequest()
            case 6..<9: if let batch = gateway.takeBatch() { send(batch, after: 0) }
            default: resendAcknowledgedBatch()
            }
            scheduler.schedule(.gateway, after: random.int(1...50))
        } else if let batch = gateway.takeBatch() {
            send(batch, after: 0)
        }
    }

    /// A request ran upstream without asking first (never authorized): its line is charged in full.
    private func finishRequest() {
        let user = Int64(1 + random.below(configuration.users))
        let line = SimDatabase.Line(requestID: gateway.newRequestID(), userID: user, tokenID: Self.token(of: user),
                                    cost: random.int(configuration.cost))
        gateway.finish(line)
        log("gateway: \(line.requestID) finished, user \(user), cost \(line.cost)")
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
        switch answer {
        case .stored:
            gateway.acknowledge(request)
            truth.acknowledged(request)
        case .unavailable:
            send(request, after: random.int(10...500))
        }
    }
}
