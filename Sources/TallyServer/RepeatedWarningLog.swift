import Foundation
import Logging
import Synchronization
import TallyCore

/// Logs the warnings that repeat while PostgreSQL is out of reach (every request and every
/// background tick fails alike) at most once per message every 10 s, each line saying how many
/// like it were left out (`left_out`): ``RepeatedWarnings`` decides, this logs.
final class RepeatedWarningLog: Sendable {
    /// The process's own: the messages are the kinds, whichever logger logs them.
    static let shared = RepeatedWarningLog()

    private let warnings: Mutex<RepeatedWarnings>

    init(interval: Double = 10) {
        warnings = Mutex(RepeatedWarnings(interval: interval))
    }

    func warning(
        _ message: Logger.Message, metadata: Logger.Metadata = [:], to logger: Logger,
        now: Double = ProcessInfo.processInfo.systemUptime
    ) {
        guard let leftOut = warnings.withLock({ $0.admit(message.description, at: now) }) else { return }
        var metadata = metadata
        if leftOut > 0 { metadata["left_out"] = "\(leftOut)" }
        logger.warning(message, metadata: metadata)
    }
}
