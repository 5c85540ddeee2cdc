/// The database's side of a run: each call commits atomically, or aborts, or commits with its
/// answer lost; notifications go out at commit.
extension Simulation {
    func execute(_ call: DatabaseCall) {
        let faults = configuration.faults
        if scheduler.now < databaseDownUntil || strikes(faults.abort) {
            stats.aborted += 1
            log("db: \(call.request) from i\(call.instance) aborted")
            answer(call, .failed(.aborted))
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

    /// Runs the call as one transaction and records what the books must now show.
    private func commit(_ call: DatabaseCall) -> DatabaseResponse {
        switch call.request {
        case let .store(lines):
            stats.batches += 1
            let before = database.rows.count
            let (result, _) = database.transact { $0.store(lines) }
            truth.stored(lines, in: database, rowsBefore: before)
            log("db: stored \(lines.count) lines from i\(call.instance): \(result.accepted) new")
            return .stored(result)
        }
    }
}
