/// The journal: holds cut from the leases are written in group commits, one batch in flight
/// (so an account's holds reach PostgreSQL in the order they were cut); whatever queued while
/// a batch committed goes out in the next.
extension LeaseMachine {
    mutating func journalCommitted(_ batch: Int, outcomes: [JournalOutcome], now: Double, _ out: inout [LeaseAction]) {
        guard let flight = journal.inFlight, flight.batch == batch else { return }
        guard outcomes.count == flight.count else {
            // Not one outcome per hold: treat it as failed; writing the batch again is harmless.
            return journalFailed(batch, now: now, &out)
        }
        journal.inFlight = nil
        journal.failures = 0
        for (entry, outcome) in zip(journal.queue.prefix(flight.count), outcomes) {
            let result = settle(entry, outcome, now: now, &out)
            if let ticket = entry.ticket { out.append(.answer(ticket, .outcome(result))) }
            for retry in entry.retries { out.append(.answer(retry, .outcome(result.retried))) }
        }
        journal.removeJournaled(flight.count)
        answerFlushes(&out)
        journal.startBatch(maxBatch: policy.maxJournalBatch, &out)
    }

    private mutating func answerFlushes(_ out: inout [LeaseAction]) {
        flushes.removeAll { flush in
            guard flush.through <= journal.journaled else { return false }
            out.append(.flushed(flush.ticket))
            return true
        }
    }

    /// The answer for a journaled hold. A request id journaled before stored nothing: its units
    /// were not taken off the lease row, so they are this lease's again. The earlier hold is the
    /// answer when it has the same scope (a retry that reached another instance); another
    /// request's id is refused and forgotten here, so that the first request's own retries
    /// still find their hold.
    private mutating func settle(
        _ entry: JournalQueue.Entry, _ outcome: JournalOutcome, now: Double, _ out: inout [LeaseAction]
    ) -> HoldOutcome {
        guard !outcome.isNew else { return .held(holdID: outcome.holdID, amount: outcome.held) }
        let request = entry.hold.request
        uncut(entry, now: now, &out)
        guard outcome.scope == request.scope else {
            retries.forget(request.requestID)
            return .requestIDInUse
        }
        let earlier = HoldOutcome.duplicate(holdID: outcome.holdID, amount: outcome.held, status: outcome.status)
        retries.remember(request.requestID, for: request.scope, earlier)
        return earlier
    }

    /// The batch may have committed (its answer was lost): it stays queued and is written again
    /// after a pause; its sync callers are told now, and their retries wait for that write.
    mutating func journalFailed(_ batch: Int, now: Double, _ out: inout [LeaseAction]) {
        guard let flight = journal.inFlight, flight.batch == batch else { return }
        journal.inFlight = nil
        failWaiting(inFirst: flight.count, &out)
        for index in journal.queue.indices.prefix(flight.count) { journal.queue[index].ticket = nil }
        pauseJournal(now: now)
    }

    /// Nothing of the batch was stored. A sync hold still waited for its first write: its caller
    /// is told it failed, so it must never be stored (written again, it kept its units until the
    /// hold expired, for a request the gateway took as refused); it is dropped, its units are
    /// free again, and a retry of its request id is cut afresh. The holds answered before stay
    /// queued and are written again after a pause.
    mutating func journalRolledBack(_ batch: Int, now: Double, _ out: inout [LeaseAction]) {
        guard let flight = journal.inFlight, flight.batch == batch else { return }
        journal.inFlight = nil
        failWaiting(inFirst: flight.count, &out)
        for entry in journal.removeUnanswered(inFirst: flight.count) {
            retries.forget(entry.hold.request.requestID)
            uncut(entry, now: now, &out)
        }
        answerFlushes(&out)
        pauseJournal(now: now)
        // With nothing left to write again, the next batch waits for the pause all the same:
        // PostgreSQL has just refused one.
    }

    /// The units of a hold that will never be journaled: the lease row still counts them, so
    /// they go back to the lease they were cut from, or, where that lease was given back since (a
    /// notice of a lowered balance, an overdraft, every lease returned), back to the account:
    /// kept, they were cut again without the refill the give-back was to force. A hold cut under
    /// a registration since replaced has no lease left to go back to (its rows went with it).
    private mutating func uncut(_ entry: JournalQueue.Entry, now: Double, _ out: inout [LeaseAction]) {
        let request = entry.hold.request
        guard entry.instance == instance, request.amount > 0 else { return }
        let cutFrom = [LeaseAccount.user(request.userID)] + (entry.hold.tokenLeased ? [.token(request.tokenID)] : [])
        var returned: [AccountUnits] = []
        for account in cutFrom {
            if accounts[account] != nil {
                accounts[account]?.free += request.amount
            } else {
                givenBack.mark(account, now: now)
                returned.append(AccountUnits(account, request.amount))
            }
        }
        if !returned.isEmpty { out.append(.giveBack(instance: instance, amounts: returned)) }
    }

    /// Tells everyone waiting for the first `count` holds' commit that their batch failed.
    private mutating func failWaiting(inFirst count: Int, _ out: inout [LeaseAction]) {
        for index in journal.queue.indices.prefix(count) {
            for ticket in journal.queue[index].waiting { out.append(.answer(ticket, .failed(.journalFailed))) }
            journal.queue[index].retries = []
        }
    }

    private mutating func pauseJournal(now: Double) {
        journal.failures += 1
        let pause = min(policy.journalRetryMaxSeconds, policy.journalRetrySeconds * Double(journal.failures))
        journal.retryAt = now + pause
    }

    /// The registration the batch was cut under was reaped: its leases went back to the accounts
    /// and may be leased elsewhere, so its holds not journaled yet must never be (migration 0016).
    /// They are dropped and forgotten (their sync callers and retries fail; they were never
    /// answered), the leases with them, and cuts wait for a new registration.
    mutating func journalRefused(_ batch: Int, now: Double, _ out: inout [LeaseAction]) {
        guard let flight = journal.inFlight, flight.batch == batch else { return }
        journal.inFlight = nil
        let reaped = journal.queue[0].instance
        for entry in journal.removeHolds(of: reaped) {
            for ticket in entry.waiting { out.append(.answer(ticket, .failed(.registrationLapsed))) }
            retries.forget(entry.hold.request.requestID)
        }
        answerFlushes(&out)
        if reaped == instance {
            accounts = [:]
            validUntil = 0
            if !renewing {
                renewing = true
                out.append(.renewRegistration)
            }
        }
        journal.startBatch(maxBatch: policy.maxJournalBatch, &out)
    }

    mutating func flush(_ ticket: LeaseTicket, _ out: inout [LeaseAction]) {
        if journal.journaled >= journal.enqueued {
            out.append(.flushed(ticket))
        } else {
            flushes.append((journal.enqueued, ticket))
        }
    }
}

/// Holds waiting for the journal, and the batch in flight (the first `count` of them).
struct JournalQueue: Sendable {
    struct Entry: Sendable {
        let hold: JournaledHold
        /// The registration whose lease the hold was cut from.
        let instance: String
        let sequence: Int
        /// The sync caller waiting for the commit.
        var ticket: LeaseTicket?
        /// Sync retries of the request id that arrived while the hold waited for the journal.
        var retries: [LeaseTicket] = []

        /// Everyone waiting for the hold's commit.
        var waiting: [LeaseTicket] { (ticket.map { [$0] } ?? []) + retries }
    }

    var queue: [Entry] = []
    /// The sequence numbers of sync holds not journaled yet, by request id (matched by bytes).
    private var unjournaled: [ExactText: Int] = [:]
    var inFlight: (batch: Int, count: Int)?
    var failures = 0
    /// When a failed batch is written again.
    var retryAt: Double?
    /// Holds queued, and journaled, since the start (sequence numbers).
    private(set) var enqueued = 0
    var journaled = 0
    private var nextBatch = 1

    mutating func enqueue(_ hold: JournaledHold, instance: String, ticket: LeaseTicket?) {
        enqueued += 1
        queue.append(Entry(hold: hold, instance: instance, sequence: enqueued, ticket: ticket))
        if ticket != nil { unjournaled[ExactText(hold.request.requestID)] = enqueued }
    }

    /// Makes `ticket` wait for the commit of the queued sync hold of `requestID`; false when
    /// there is none (the hold is journaled, or was answered without waiting).
    mutating func awaitCommit(of requestID: String, ticket: LeaseTicket) -> Bool {
        guard let sequence = unjournaled[ExactText(requestID)], let index = index(of: sequence) else { return false }
        queue[index].retries.append(ticket)
        return true
    }

    /// The position of the hold with this sequence number, if it is queued (the queue is in
    /// sequence order, with gaps where a rolled-back batch's sync holds were dropped).
    private func index(of sequence: Int) -> Int? {
        var low = 0
        var high = queue.count
        while low < high {
            let middle = (low + high) / 2
            if queue[middle].sequence < sequence { low = middle + 1 } else { high = middle }
        }
        return low < queue.count && queue[low].sequence == sequence ? low : nil
    }

    /// Drops the first `count` holds: their batch committed.
    mutating func removeJournaled(_ count: Int) {
        forgetUnjournaled(queue.prefix(count))
        queue.removeFirst(count)
        markJournaled()
    }

    /// Drops the holds among the first `count` whose sync caller still waits for their first
    /// write (their batch rolled back) and returns them; the others keep their places.
    mutating func removeUnanswered(inFirst count: Int) -> [Entry] {
        let head = queue.prefix(count)
        let dropped = head.filter { $0.ticket != nil }
        forgetUnjournaled(dropped[...])
        queue.replaceSubrange(0..<count, with: head.filter { $0.ticket == nil })
        markJournaled()
        return dropped
    }

    private mutating func forgetUnjournaled(_ entries: ArraySlice<Entry>) {
        for entry in entries {
            let requestID = ExactText(entry.hold.request.requestID)
            if unjournaled[requestID] == entry.sequence { unjournaled[requestID] = nil }
        }
    }

    /// Every hold before the queue's head is journaled (or dropped, never to be).
    private mutating func markJournaled() {
        journaled = queue.first.map { $0.sequence - 1 } ?? enqueued
    }

    /// Drops the holds at the head cut under `instance` (never to be journaled) and returns them.
    mutating func removeHolds(of instance: String) -> ArraySlice<Entry> {
        let count = queue.prefix { $0.instance == instance }.count
        guard count > 0 else { return [] }
        let removed = queue.prefix(count)
        removeJournaled(count)
        return removed
    }

    /// Sends the next batch (the queue's head, cut from one registration) unless one is in
    /// flight or waiting to be retried.
    mutating func startBatch(maxBatch: Int, _ out: inout [LeaseAction]) {
        guard inFlight == nil, retryAt == nil, let first = queue.first else { return }
        let holds = queue.prefix(maxBatch).prefix { $0.instance == first.instance }.map(\.hold)
        inFlight = (nextBatch, holds.count)
        out.append(.journal(batch: nextBatch, instance: first.instance, holds: holds))
        nextBatch += 1
    }
}

extension HoldOutcome {
    /// The answer to a retry of the request id that got this outcome: the same hold.
    var retried: HoldOutcome {
        guard case .held(let holdID, let amount) = self else { return self }
        return .duplicate(holdID: holdID, amount: amount, status: "held")
    }
}
