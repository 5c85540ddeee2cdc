/// The lease functions of migration 0009_leases.sql and the hold functions of
/// 0005_enforcement.sql, as the simulated database runs them.
extension SimDatabase {
    enum GrantState: String { case ok, unknown, unlimited, exhausted }

    struct Grant: Equatable {
        let account: SimAccount
        let granted: Int64
        let state: GrantState
        let others: Int64
    }

    /// A hold cut from a lease, as `tally_journal_holds` receives it.
    struct JournalEntry: Equatable {
        let id: Int64
        let requestID: String
        let userID: Int64
        let tokenID: Int64
        let amount: Int64
        let tokenLeased: Bool
    }

    struct JournalResult: Equatable {
        let requestID: String
        let holdID: Int64
        let held: Int64
        let status: String
    }

    /// What a user or token can still lease: its balance less what is reserved (and, once
    /// charges are folded in ticks, less what is pending).
    func headroom(_ account: SimAccount) -> Int64 {
        switch account {
        case let .user(id):
            guard let user = users[id] else { return 0 }
            return user.quota - user.reserved
        case let .token(id):
            guard let token = tokens[id] else { return 0 }
            return token.remainQuota - token.reserved
        }
    }

    mutating func register(_ instance: String, ttl: SimTime, reclaimAfter: SimTime, now: SimTime) {
        instances[instance] = Registration(expiresAt: now + ttl, reclaimAfter: reclaimAfter)
    }

    /// `UPDATE tally_instances SET expires_at = now() + ttl WHERE id = $1`: false when reaped.
    mutating func renew(_ instance: String, ttl: SimTime, now: SimTime) -> Bool {
        guard instances[instance] != nil else { return false }
        instances[instance]?.expiresAt = now + ttl
        return true
    }

    /// `tally_lease`: min(want, what is left) of each account, users then tokens in id order;
    /// `lease-wanted:` when it falls short while other instances hold leases of the account.
    mutating func lease(_ instance: String, wants: [(SimAccount, Int64)]) throws -> [Grant] {
        guard instances[instance] != nil else { throw SimDatabaseError.notRegistered }
        var summed: [SimAccount: Int64] = [:]
        for (account, want) in wants { summed[account, default: 0] += want }
        var grants: [Grant] = []
        for (account, want) in summed.sorted(by: { $0.key < $1.key }) {
            var granted: Int64 = 0
            let state: GrantState
            switch account {
            case let .user(id):
                state = users[id] == nil ? .unknown : .ok
                if state == .ok {
                    granted = min(want, max(headroom(account), 0))
                    users[id]!.reserved += granted
                }
            case let .token(id):
                if let token = tokens[id] {
                    state = !token.limited ? .unlimited : token.remainQuota <= 0 ? .exhausted : .ok
                    if state == .ok {
                        granted = min(want, max(headroom(account), 0))
                        tokens[id]!.reserved += granted
                    }
                } else {
                    state = .unknown
                }
            }
            if granted > 0 { leases[LeaseKey(instance: instance, account: account), default: 0] += granted }
            let others = leased(account) - leased(account, by: instance)
            grants.append(Grant(account: account, granted: granted, state: state, others: others))
            if granted < want, leases.contains(where: { $0.key.account == account && $0.key.instance != instance && $0.value > 0 }) {
                notify(.leaseWanted(account))
            }
        }
        return grants
    }

    /// `tally_return_leases`: reserved −= amount for the instance's lease rows that exist
    /// (a reaped instance has none); rows that reach 0 are deleted. `CHECK (amount >= 0)`.
    mutating func returnLeases(_ instance: String, amounts: [(SimAccount, Int64)]) throws {
        for (account, amount) in amounts.sorted(by: { $0.0 < $1.0 }) {
            let key = LeaseKey(instance: instance, account: account)
            guard let row = leases[key] else { continue }
            guard row >= amount else {
                throw SimCheckViolation("tally_return_leases: \(instance) returns \(amount) of \(account), its lease row holds \(row)")
            }
            leases[key] = row - amount == 0 ? nil : row - amount
            adjustReserved(account, by: -amount)
        }
    }

    /// `tally_journal_holds`: inserts the holds (a request id stored before inserts nothing)
    /// and takes the new ones off the instance's lease rows; a reaped instance's new holds are
    /// added to `reserved` instead. Answers, per hold, the hold stored under its request id.
    mutating func journal(_ instance: String, _ entries: [JournalEntry], ttl: SimTime, now: SimTime) throws -> [JournalResult] {
        let registered = instances[instance] != nil
        var inserted: [JournalEntry] = []
        for entry in entries.sorted(by: { $0.requestID < $1.requestID }) where holds[entry.requestID] == nil {
            holds[entry.requestID] = Hold(id: entry.id, requestID: entry.requestID, userID: entry.userID, tokenID: entry.tokenID,
                                          amount: entry.amount, tokenReserved: entry.tokenLeased, expiresAt: now + ttl)
            inserted.append(entry)
        }
        for entry in inserted {
            var accounts = [SimAccount.user(entry.userID)]
            if entry.tokenLeased { accounts.append(.token(entry.tokenID)) }
            for account in accounts {
                if registered {
                    // UPDATE user_leases … WHERE instance_id = $1 AND user_id = …: no row, no change.
                    let key = LeaseKey(instance: instance, account: account)
                    guard let row = leases[key] else { continue }
                    guard row >= entry.amount else {
                        throw SimCheckViolation("tally_journal_holds: \(instance) journals \(entry.amount) of \(account), its lease row holds \(row)")
                    }
                    leases[key] = row - entry.amount
                } else {
                    adjustReserved(account, by: entry.amount)
                }
            }
        }
        return entries.compactMap { entry in
            holds[entry.requestID].map { JournalResult(requestID: entry.requestID, holdID: $0.id, held: $0.amount, status: $0.status.rawValue) }
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
        case let .user(id): users[id]?.reserved += units
        case let .token(id): tokens[id]?.reserved += units
        }
    }
}

/// A CHECK constraint failed: in PostgreSQL the statement (and every retry of it) fails, so
/// the simulation reports it as a bug rather than as a transient error.
struct SimCheckViolation: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
