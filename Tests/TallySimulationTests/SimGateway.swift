import TallyCore

/// What the gateway asks an instance over HTTP.
enum GatewayRequest: CustomStringConvertible {
    /// `POST /gateway/v1/logs` with one batch (resent whole, same request ids, until answered).
    case ingest(batch: Int, lines: [SimDatabase.Line])
    /// `POST /gateway/v1/authorize`: a hold before the request goes upstream (retried with the
    /// same request id when unanswered, a few times).
    case authorize(HoldRequest)
    /// `POST /gateway/v1/release`: the request failed upstream; its hold goes back.
    case release(requestID: String)

    var description: String {
        switch self {
        case .ingest(let batch, let lines): "ingest batch \(batch) (\(lines.count) lines)"
        case .authorize(let hold): "authorize \(hold.requestID) (user \(hold.userID), \(hold.amount))"
        case .release(let requestID): "release \(requestID)"
        }
    }
}

/// What an instance answers.
enum GatewayAnswer: CustomStringConvertible {
    case stored(SimDatabase.StoreResult)
    case hold(HoldOutcome)
    case released
    /// 503 (the database failed the call) or no server on the port: the gateway resends.
    case unavailable

    var description: String {
        switch self {
        case .stored(let result): "200 accepted \(result.accepted), duplicates \(result.duplicates)"
        case .hold(let outcome): "\(outcome)"
        case .released: "released"
        case .unavailable: "503"
        }
    }
}

/// The gateway in front of the instances: it prices finished requests into log lines and posts
/// them in batches, resending a batch until it is answered, as docs/ingest.md asks of a gateway.
/// It keeps the truth the books are checked against: every line it made and what it cost.
struct SimGateway {
    var movesLeft: Int
    private(set) var nextRequest = 0
    private var nextBatch = 0
    private var nextExchange = 0
    /// Lines of finished requests not yet in a batch.
    var unbatched: [SimDatabase.Line] = []
    /// Batches sent and not acknowledged yet, and those acknowledged.
    var openBatches: [Int: [SimDatabase.Line]] = [:]
    var ackedBatches: [Int: [SimDatabase.Line]] = [:]
    /// HTTP exchanges waiting for their answer.
    var exchanges: [Int: GatewayRequest] = [:]
    /// Every line made, by request id: the truth of what each request cost.
    var costs: [String: SimDatabase.Line] = [:]
    /// Requests waiting for their hold (with the attempts so far), and those running upstream
    /// on a hold of the amount given.
    var authorizing: [String: (request: HoldRequest, attempts: Int)] = [:]
    var running: [String: (request: HoldRequest, held: Int64)] = [:]

    init(moves: Int) { movesLeft = moves }

    /// Nothing more to do: every request finished, every line in a batch, every batch
    /// acknowledged and every exchange closed.
    var isIdle: Bool {
        movesLeft == 0 && unbatched.isEmpty && openBatches.isEmpty && authorizing.isEmpty && running.isEmpty
            && exchanges.isEmpty
    }

    mutating func newRequestID() -> String {
        nextRequest += 1
        return "r\(nextRequest)"
    }

    mutating func finish(_ line: SimDatabase.Line) {
        costs[line.requestID] = line
        unbatched.append(line)
    }

    /// The unbatched lines as a new batch.
    mutating func takeBatch() -> GatewayRequest? {
        guard !unbatched.isEmpty else { return nil }
        nextBatch += 1
        openBatches[nextBatch] = unbatched
        defer { unbatched = [] }
        return .ingest(batch: nextBatch, lines: unbatched)
    }

    mutating func open(_ request: GatewayRequest) -> Int {
        nextExchange += 1
        exchanges[nextExchange] = request
        return nextExchange
    }

    /// Closes an exchange at its first answer or its timeout; returns its request, nil when it
    /// was closed before (a duplicated request's second answer, an answer after the timeout).
    mutating func close(_ exchange: Int) -> GatewayRequest? {
        exchanges.removeValue(forKey: exchange)
    }

    /// A batch answered 200: its lines are delivered.
    mutating func acknowledge(_ request: GatewayRequest) {
        guard case .ingest(let batch, let lines) = request, openBatches[batch] != nil else { return }
        openBatches[batch] = nil
        ackedBatches[batch] = lines
    }
}
