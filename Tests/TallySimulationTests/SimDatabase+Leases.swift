import TallyCore

/// The lease functions of migrations 0009_leases.sql, 0011_authorize_scaling.sql and
/// 0016_lease_fencing.sql and the hold functions of 0005_enforcement.sql, as the simulated
/// database runs them, speaking the lease machine's own values (`AccountUnits`, `LeaseGrant`,
/// `JournaledHold`, `JournalOutcome`).
extension SimDatabase {
    /// What a user or token can still lease: its balance less what is reserved (and, once
    /// charges are folded in ticks, less what is pending).
    func headroom(_ account: SimAccount) -> Int64 { balance(account) - reserved(account) }

    func balance(_ account: SimAccount) -> Int64 {
        switch account {
        case .user(let id): users[id]?.quota ?? 0
        case .token(let id): tokens[id]?.remainQuota ?? 0
        }
    }

    func reserved(_ account: SimAccount) -> Int64 {
        switch account {
        case .user(let id): users[id]?.reserved ?? 0
        case .token(let id): tokens[id]?.reserved ?? 0
        }
    }

    mutating func register(_ instance: String, ttl: SimTime, reclaimAfter: SimTime, now: SimTime) {
        instances[instance] = Registration(expiresAt: now + ttl, reclaimAfter: reclaimAfter)
    }

    /// `UPDATE tally_instance_renewals SET expires_at = now() + ttl WHERE instance_id = $1`
    /// (migration 0011): false when reaped.
    mutating func renew(_ instance: String, ttl: SimTime, now: SimTime) -> Bool {
        guard instances[instance] != nil else { return false }
        instances[instance]?.expiresAt = now + ttl
        return true
    }

    /// `tally_lease`: min(want, what is left) of each account, users then tokens in id order;
    /// `lease-wanted:` when it falls short while other instances hold leases of the account.
    mutating func lease(_ instance: String, wants: [AccountUnits]) throws -> [LeaseGrant] {
        guard instances[instance] != nil else { throw SimDatabaseError.notRegistered }
        var summed: [SimAccount: Int64] = [:]
        for want in wants { summed[want.account, default: 0] += want.units }
        var grants: [LeaseGrant] = []
        for (account, want) in summed.sorted(by: { $0.key < $1.key }) {
            let state = grantState(account)
            var granted: Int64 = 0
            if state == .ok {
                let room = plantedBug == .leaseIgnoresReserved ? balance(account) : headroom(account)
                granted = min(want, max(room, 0))
                adjustReserved(account, by: granted)
            }
            if granted > 0 { leases[LeaseKey(instance: instance, account: account), default: 0] += granted }
            let others = leased(account) - leased(account, by: instance)
            grants.append(LeaseGrant(account: account, granted: granted, state: state, others: others))
            if granted < want, others > 0 { notify(.leaseWanted(account)) }
        }
        return grants
    }

    private func grantState(_ account: SimAccount) -> LeaseGrant.State {
        switch account {
        case .user(let id): return users[id] == nil ? .unknown : .ok
        case .token(let id):
            guard let token = tokens[id] else { return .unknown }
            return !token.limited ? .unlimited : token.remainQuota <= 0 ? .exhausted : .ok
        }
    }

    /// `tally_return_leases`: reserved −= amount for the instance's lease rows that exist
    /// (a reaped instance has none); rows that reach 0 are deleted. `CHECK (amount >= 0)`.
    mutating func returnLeases(_ instance: String, amounts: [AccountUnits]) throws {
        for amount in amounts.sorted(by: { $0.account < $1.account }) {
            let key = LeaseKey(instance: instance, account: amount.account)
            guard let row = leases[key] else { continue }
            guard row >= amount.units else {
                throw SimCheckViolation(
                    "tally_return_leases: \(instance) returns \(amount.units) of "
                        + "\(amount.account), "
                        + "its lease row holds \(row)")
            }
            leases[key] = row - amount.units == 0 ? nil : row - amount.units
            adjustReserved(amount.account, by: -amount.units)
        }
    }

    /// `tally_journal_holds` (migration 0016): refuses a reaped instance's batch; inserts the
    /// holds (a request id stored before inserts nothing) and takes the new ones off the
    /// instance's lease rows. Answers, per hold, the hold stored under its request id.
    mutating func journal(_ instance: String, _ entries: [JournaledHold], ttl: SimTime, now: SimTime) throws
        -> [JournalOutcome]
    {
        guard instances[instance] != nil else { throw SimDatabaseError.notRegistered }
        var inserted: [JournaledHold] = []
        for entry in entries.sorted(by: { $0.request.requestID < $1.request.requestID })
        where holds[entry.request.requestID] == nil {
            let request = entry.request
            holds[request.requestID] = Hold(
                id: entry.id, requestID: request.requestID, userID: request.userID,
                tokenID: request.tokenID, model: request.model, amount: request.amount,
                tokenReserved: entry.tokenLeased, expiresAt: now + ttl)
            inserted.append(entry)
        }
        for entry in inserted {
            var accounts = [SimAccount.user(entry.request.userID)]
            if entry.tokenLeased { accounts.append(.token(entry.request.tokenID)) }
            for account in accounts {
                // UPDATE user_leases … WHERE instance_id = $1 AND user_id = …: no row, no change.
                let key = LeaseKey(instance: instance, account: account)
                guard let row = leases[key], plantedBug != .journalKeepsLeaseRows else { continue }
                guard row >= entry.request.amount else {
                    throw SimCheckViolation(
                        "tally_journal_holds: \(instance) journals \(entry.request.amount) "
                            + "of \(account), its lease row holds \(row)")
                }
                leases[key] = row - entry.request.amount
            }
        }
        return entries.compactMap { entry in
            holds[entry.request.requestID].map {
                JournalOutcome(
                    holdID: $0.id, held: $0.amount, status: $0.status.rawValue,
                    scope: RequestScope(userID: $0.userID, tokenID: $0.tokenID, model: $0.model),
                    isNew: $0.id == entry.id)
            }
        }
    }

    /// `tally_reap_instances`: the leases of instances expired more than their grace ago (or of
    /// `only`, retiring) go back to their accounts; the registrations are deleted.
    mutating func reap(now: SimTime, only: String? = nil) -> Int {
        let dead = instances.filter { id, registration in
            only.map { $0 == id } ?? (registration.expiresAt + registration.reclaimAfter < now)
        }.keys.sorted()
        for instance in dead {
            for (key, amount) in leases.filter({ $0.key.instance == instance }).sorted(by: { $0.key < $1.key }) {
                adjustReserved(key.account, by: -amount)
                leases[key] = nil
            }
            instances[instance] = nil
        }
        return dead.count
    }

    /// `nextval` of the holds sequence (INCREMENT BY 1024): a block of 1024 hold ids.
    mutating func holdIDBlock() -> Int64 {
        holdSequence += 1
        return (holdSequence - 1) * 1024 + 1
    }

    /// `tally_close_holds`: closes the open holds named and returns their reservations.
    mutating func closeHolds(_ requestIDs: [String], as status: HoldStatus) -> [(String, Int64)] {
        var closed: [(String, Int64)] = []
        for requestID in requestIDs {
            guard let hold = holds[requestID], hold.status == .held else { continue }
            holds[requestID]?.status = status
            adjustReserved(.user(hold.userID), by: -hold.amount)
            if hold.tokenReserved { adjustReserved(.token(hold.tokenID), by: -hold.amount) }
            closed.append((requestID, hold.amount))
        }
        return closed
    }

    /// `PostgresHoldRepository.release`: the units returned, nil for an unknown request id.
    mutating func release(_ requestID: String) -> Int64? {
        guard holds[requestID] != nil else { return nil }
        return closeHolds([requestID], as: .released).first?.1 ?? 0
    }

    /// `PostgresHoldRepository.expireDue`: closes the holds past their expiry.
    mutating func expireDue(now: SimTime) -> [String] {
        let due = holds.values.filter { $0.status == .held && $0.expiresAt < now }.map(\.requestID).sorted()
        return closeHolds(due, as: .expired).map(\.0)
    }

    mutating func adjustReserved(_ account: SimAccount, by units: Int64) {
        switch account {
        case .user(let id): users[id]?.reserved += units
        case .token(let id): tokens[id]?.reserved += units
        }
    }
}

/// A CHECK constraint failed: in PostgreSQL the statement (and every retry of it) fails, so
/// the simulation reports it as a bug rather than as a transient error.
struct SimCheckViolation: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
