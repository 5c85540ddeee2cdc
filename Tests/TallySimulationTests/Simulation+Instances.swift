/// The instances' side of a run: serving the gateway, calling the database, crashing.
extension Simulation {
    func serve(_ request: GatewayRequest, exchange: Int, on index: Int) {
        let instance = instances[index]
        guard instance.alive else {
            // Nobody listens on the port: the connection is refused at once.
            log("i\(index) is down: exchange \(exchange) refused")
            scheduler.schedule(.answer(exchange: exchange, .unavailable), after: latency())
            return
        }
        switch request {
        case let .ingest(_, lines):
            call(.store(lines), from: index, reply: .http(exchange: exchange))
        }
    }

    func call(_ request: DatabaseCall.Request, from index: Int, reply: DatabaseCall.Reply) {
        let call = DatabaseCall(instance: index, incarnation: instances[index].incarnation, request: request, reply: reply)
        scheduler.schedule(.database(call), after: latency())
    }

    /// An answer from the database reaches the instance that asked (unless it died meanwhile).
    func deliver(_ response: DatabaseResponse, for call: DatabaseCall) {
        let instance = instances[call.instance]
        guard instance.alive, instance.incarnation == call.incarnation else { return }
        switch call.reply {
        case let .http(exchange):
            switch response {
            case let .stored(result): reply(exchange, .stored(result))
            case .failed: reply(exchange, .unavailable)
            }
        }
    }

    /// kill -9: memory, calls in flight and their answers are gone; it comes back later as a
    /// new incarnation.
    func crash(_ index: Int) {
        stats.crashes += 1
        instances[index].alive = false
        instances[index].incarnation += 1
        log("fault: i\(index) is killed")
        scheduler.schedule(.restart(instance: index), after: random.int(100...5_000))
    }

    func restart(_ index: Int) {
        instances[index].alive = true
        log("i\(index) restarts as \(instances[index].name)")
    }
}
