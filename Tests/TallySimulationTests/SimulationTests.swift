import Foundation
import Testing

/// The deterministic simulation (docs/testing.md): every seed is one run of the gateway,
/// several instances and the database through random interleavings and faults, checked after
/// every step. `TALLY_SIM_SEED=n` replays seed n alone and prints its trace;
/// `TALLY_SIM_SEEDS=n` runs n seeds instead of 2,000 (`ops/test --slow`, as CI runs it: 10,000).
@Suite("deterministic simulation of the money state machines")
struct SimulationTests {
    static let environment = ProcessInfo.processInfo.environment
    static let seeds = environment["TALLY_SIM_SEEDS"].flatMap(UInt64.init) ?? 2_000
    static let replay = environment["TALLY_SIM_SEED"].flatMap(UInt64.init)

    static func replayCommand(_ seed: UInt64) -> String {
        "TALLY_SIM_SEED=\(seed) swift test --filter SimulationTests/sweep"
    }

    @Test("seed sweep: no overdraft, nothing lost or charged twice, reserved = holds + leases, books balance")
    func sweep() async throws {
        if let seed = Self.replay {
            let simulation = Simulation(seed: seed, tracing: true)
            let outcome = Result { try simulation.run() }
            print(simulation.trace.joined(separator: "\n"))
            if case .failure(let error) = outcome { Issue.record("\(error)") }
            return
        }
        let started = ContinuousClock.now
        let report = await SimulationSweep.run(seeds: 1...Self.seeds)
        let elapsed = ContinuousClock.now - started
        print("simulation: \(Self.seeds) seeds, \(report.steps) steps in \(elapsed); \(report.stats)")
        if let failure = report.failures.first {
            let more: String = report.failures.dropFirst().prefix(9).map { "\n  also \($0)" }.joined()
            let message =
                "\(report.failures.count) seed(s) failed; the first: \(failure)\n  replay: "
                + Self.replayCommand(failure.seed) + more
            Issue.record("\(message)")
        }
    }

    @Test("every planted bug is caught within 200 seeds", arguments: PlantedBug.allCases)
    func plantedBugIsCaught(_ bug: PlantedBug) {
        let caught = (1...200).lazy.compactMap { seed -> SimViolation? in
            do { try Simulation(seed: UInt64(seed), plantedBug: bug).run() } catch let violation as SimViolation {
                return violation
            } catch { return nil }
            return nil
        }.first
        #expect(caught != nil, "\(bug) went unnoticed")
        if let caught { print("planted \(bug): caught at \(caught)") }
    }

    @Test("a failing seed replays exactly: the same violation at the same step, after the same trace")
    func failureReplays() throws {
        func run(_ seed: UInt64) -> (violation: String?, trace: [String]) {
            let simulation = Simulation(seed: seed, tracing: true, plantedBug: .leaseIgnoresReserved)
            do { try simulation.run() } catch { return ("\(error)", simulation.trace) }
            return (nil, simulation.trace)
        }
        let seed = try #require((1...200).lazy.map(UInt64.init).first { run($0).violation != nil })
        let first = run(seed), second = run(seed)
        #expect(first.violation == second.violation)
        #expect(first.trace == second.trace)
        #expect(first.trace.count > 10)
    }

    @Test("a seed replays exactly: the same trace and the same books")
    func deterministic() throws {
        for seed: UInt64 in [1, 2, 3, 99] {
            let first = Simulation(seed: seed, tracing: true), second = Simulation(seed: seed, tracing: true)
            try first.run()
            try second.run()
            #expect(first.trace == second.trace, "seed \(seed)")
            #expect(first.steps > 100, "seed \(seed) ran \(first.steps) steps")
        }
    }
}

/// Seeds run in parallel chunks (each run is independent and deterministic).
enum SimulationSweep {
    struct Report: Sendable {
        var steps = 0
        var failures: [SimViolation] = []
        var stats = SimStats()
    }

    static func run(seeds: ClosedRange<UInt64>, chunks: Int = 4) async -> Report {
        let width = Int(max(1, UInt64(seeds.count) / UInt64(chunks)))
        let bounds = Array(stride(from: seeds.lowerBound, through: seeds.upperBound, by: width))
        return await withTaskGroup(of: Report.self) { group in
            for (index, start) in bounds.enumerated() {
                let end = index + 1 < bounds.count ? bounds[index + 1] - 1 : seeds.upperBound
                group.addTask { runChunk(start...end) }
            }
            var total = Report()
            for await report in group {
                total.steps += report.steps
                total.failures += report.failures
                total.stats.add(report.stats)
            }
            total.failures.sort { $0.seed < $1.seed }
            return total
        }
    }

    private static func runChunk(_ seeds: ClosedRange<UInt64>) -> Report {
        var report = Report()
        for seed in seeds {
            let simulation = Simulation(seed: seed)
            do { try simulation.run() } catch let violation as SimViolation {
                report.failures.append(violation)
            } catch {
                report.failures.append(simulation.violation("\(error)"))
            }
            report.steps += simulation.steps
            report.stats.add(simulation.stats)
        }
        return report
    }
}
