/// Polls `condition` until it holds or `timeout` passes, and says whether it held. Tests wait
/// on what they can observe instead of sleeping a fixed time; the deadline is generous because
/// a loaded 2-core machine is slow, and a condition that holds returns at once.
public func waitUntil(
    timeout: Duration = .seconds(60), every interval: Duration = .milliseconds(20),
    _ condition: () async throws -> Bool
) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return true }
        guard ContinuousClock.now < deadline else { return false }
        try await Task.sleep(for: interval)
    }
}
