import Foundation
import Testing

/// The deterministic simulation (docs/simulation.md): every seed is one run of the gateway,
/// several instances and the database through random interleavings and faults, checked after
/// every step. `TALLY_SIM_SEED=n` replays seed n alone and prints its trace;
/// `TALLY_SIM_SEEDS=n` runs n seeds instead of 10,000.
@Suite("deterministic simulation of the money state machines")
struct SimulationTests {
    static let environment = ProcessInfo.processInfo.environment
    static let seeds = environment["TALLY_SIM_SEEDS"].flatMap(UInt64.init) ?? 10_000
    static let replay = environment["TALLY_SIM_SEED"].flatMap(UInt64.init)

    static func replayCommand(_ seed: UInt64) -> String {
        "TALLY_SIM_SEED=\(seed) swift test --filter SimulationTests/sweep"
    }

    @Test("10,000 seeds: no overdraft, no charge lost or applied twice, reserved = holds + leases, balance + pending = ledger")
    func sweep() async throws {
        if let seed = Self.replay {
            let simulation = Simulation(seed: seed, tracing: true)
            let outcome = Result { try simulation.run() }
            print(simulation.trace.joined(separator: "\n"))
            if case let .failure(error) = outcome { Issue.record("\(error)") }
            return
        }
        let started = ContinuousClock.now
        let report = await SimulationSweep.run(seeds: 1...Self.seeds)
        print("simulation: \(Self.seeds) seeds, \(report.steps) steps in \(ContinuousClock.now - started); \(report.stats)")
        if let failure = report.failures.first {
            Issue.record("\(report.failures.count) seed(s) failed; the first: \(failure)\n  replay: \(Self.replayCommand(failure.seed))")
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
        let bounds = Array(stride(from: seeds.lowerBound, through: seeds.upperBound, by: Int(max(1, UInt64(seeds.count) / UInt64(chunks)))))
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
