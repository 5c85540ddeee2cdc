import TallyCore

/// The database's side of a run: each call commits atomically, or aborts, or commits with its
/// answer lost; notifications go out at commit.
extension Simulation {
    func execute(_ call: DatabaseCall) {
        let faults = configuration.faults
        let down = scheduler.now < databaseDownUntil
        if down || strikes(faults.abort) {
            stats.aborted += 1
            log("db: \(call.request) from i\(call.instance) aborted")
            answer(call, .failed(down ? .aborted : .rolledBack))
            return
        }
        let response = commit(call)
        if strikes(faults.lostCommitAnswer) {
            stats.lostCommitAnswers += 1
            log("fault: db committed \(call.request) from i\(call.instance), the answer is lost")
            answer(call, .failed(.aborted))
            return
        }
        answer(call, response)
    }

    private func answer(_ call: DatabaseCall, _ response: DatabaseResponse) {
        scheduler.schedule(.databaseAnswer(call, response), after: latency())
    }

    /// Runs the call as one transaction, sends its notifications and records what the books
    /// must now show. A CHECK constraint that fails is a bug: PostgreSQL would fail it forever.
    private func commit(_ call: DatabaseCall) -> DatabaseResponse {
        let now = scheduler.now
        // Kept only for a store (its lines' holds before it); a copy kept makes every write copy.
        let before = if case .store = call.request { database } else { SimDatabase() }
        do {
            let (response, notifications) = try database.transact { database in
                try Self.apply(
                    call.request, to: &database, now: now, holdTTL: configuration.holdTTL,
                    reclaimAfter: configuration.reclaimAfter)
            }
            databaseChanged = true
            log("db: \(call.request) from i\(call.instance) → \(response)")
            if case .store(let lines) = call.request {
                stats.batches += 1
                truth.stored(lines, before: before, after: database)
                for line in lines
                where before.rows[line.requestID] == nil && before.holds[line.requestID]?.status != .held {
                    log(
                        "db: \(line.requestID) charged \(line.cost) in full: its hold is "
                            + (before.holds[line.requestID].map { "\($0.status)" } ?? "not stored"))
                }
            }
            broadcast(notifications)
            return response
        } catch let error as SimDatabaseError {
            log("db: \(call.request) from i\(call.instance) failed: \(error)")
            return .failed(error)
        } catch {
            truth.problems.append("\(call.request) from i\(call.instance): \(error)")
            return .failed(.aborted)
        }
    }

    /// One call's statements, inside its transaction.
    private static func apply(
        _ request: DatabaseCall.Request, to database: inout SimDatabase, now: SimTime,
        holdTTL: SimTime, reclaimAfter: SimTime
    ) throws -> DatabaseResponse {
        switch request {
        case .store(let lines): return .stored(database.store(lines))
        case .register(let name):
            database.register(name, ttl: SimDatabase.registrationTTL, reclaimAfter: reclaimAfter, now: now)
            return .done
        case .renew(let name): return .renewed(database.renew(name, ttl: SimDatabase.registrationTTL, now: now))
        case .lease(let name, let wants): return .granted(try database.lease(name, wants: wants))
        case .journal(let name, let holds): return .journaled(try database.journal(name, holds, ttl: holdTTL, now: now))
        case .returnLeases(let name, let amounts):
            try database.returnLeases(name, amounts: amounts)
            return .done
        case .holdIDBlock: return .holdIDs(first: database.holdIDBlock())
        case .storedHold(let requestID, let scope):
            let stored = database.holds[requestID].flatMap {
                RequestScope(userID: $0.userID, tokenID: $0.tokenID, model: $0.model) == scope ? $0 : nil
            }
            return .storedHold(
                stored.map { .duplicate(holdID: $0.id, amount: $0.amount, status: $0.status.rawValue) })
        case .release(let requestID): return database.release(requestID) == nil ? .failed(.notFound) : .released
        case .expireHolds:
            _ = database.expireDue(now: now)
            return .done
        case .reap:
            _ = database.reap(now: now)
            return .done
        }
    }
}
