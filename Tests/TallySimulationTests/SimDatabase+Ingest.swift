/// Ingest as `PostgresIngestRepository.store` runs it (Sources/TallyStore/Ingest/
/// IngestRepository.swift): one transaction stores the batch's new rows, settles their holds,
/// debits users and tokens, appends the ledger and notifies overdrawn accounts.
extension SimDatabase {
    /// One gateway log line, priced.
    struct Line: Equatable {
        let requestID: String
        let userID: Int64
        let tokenID: Int64
        let cost: Int64
    }

    struct StoreResult: Equatable {
        let accepted: Int
        let duplicates: Int
    }

    mutating func store(_ lines: [Line]) -> StoreResult {
        batches += 1
        var seen: Set<String> = []
        // insertNew: repeated ids inside the batch dropped, stored ids skipped (ON CONFLICT).
        var fresh = lines.filter { seen.insert($0.requestID).inserted && rows[$0.requestID] == nil }
        if plantedBug == .dropLastLine, !fresh.isEmpty { fresh.removeLast() }
        for line in fresh {
            rows[line.requestID] = Row(userID: line.userID, tokenID: line.tokenID, cost: line.cost, batch: batches)
        }
        // ingest_settle_holds, then ingest_unreserve_users / _tokens.
        _ = closeHolds(fresh.map(\.requestID), as: .settled)
        // ingest_append_ledger, ingest_debit_users, ingest_debit_tokens.
        let debited = plantedBug == .chargeResentLines ? lines : fresh
        for line in debited {
            ledgerBalance[line.userID, default: 0] -= line.cost
            charged[line.requestID, default: 0] += 1
            users[line.userID]?.quota -= line.cost
            users[line.userID]?.usedQuota += line.cost
            users[line.userID]?.requestCount += 1
            if let token = tokens[line.tokenID] {
                if token.limited { tokens[line.tokenID]?.remainQuota -= line.cost }
                tokens[line.tokenID]?.usedQuota += line.cost
            }
        }
        // ingest_notify_overdrawn.
        for userID in Set(fresh.map(\.userID)).sorted() where (users[userID].map { $0.quota < $0.reserved } ?? false) {
            notify(.overdrawn(.user(userID)))
        }
        for tokenID in Set(fresh.map(\.tokenID)).sorted() {
            guard let token = tokens[tokenID], token.limited, token.remainQuota < token.reserved else { continue }
            notify(.overdrawn(.token(tokenID)))
        }
        return StoreResult(accepted: fresh.count, duplicates: lines.count - fresh.count)
    }
}
