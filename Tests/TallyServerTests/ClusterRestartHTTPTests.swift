import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Synchronization
import TallyCore
import TallyServer
import TallyTestSupport
import Testing

/// Stops the shared cluster: runs only in ops/test's disruptive pass.
@Suite("cluster restarts over HTTP", .serialized, .enabled(if: disruptiveTestsEnabled))
struct ClusterRestartTests {
    @Test("/readyz and ingest answer 503 with a tid while PostgreSQL is down, and recover without a restart")
    func databaseOutage() async throws {
        let db = try await TestDatabase.shared("outage")
        try await db.prepareBilling(users: 1)
        try await TestApp.build(db).test(.live) { client in
            try await client.execute(uri: "/readyz", method: .get) { #expect($0.status == .ok) }
            try TestCluster.control("stop")
            do {
                try await client.execute(uri: "/readyz", method: .get) { response in
                    #expect(response.status == .serviceUnavailable)
                    let body = try ErrorBody(response.body)
                    #expect(body.code == "database_unavailable")
                    #expect(body.tid == response.headers[.xTid])
                }
                try await client.execute(
                    uri: "/gateway/v1/logs", method: .post, headers: [.authorization: "Bearer test-gateway-secret"],
                    body: ByteBuffer(string: LogLines.chat("outage-1") + "\n")
                ) { response in
                    #expect(response.status == .serviceUnavailable)
                    let body = try ErrorBody(response.body)
                    #expect(body.envelope == "gateway")
                }
            } catch {
                try TestCluster.control("start")
                throw error
            }
            try TestCluster.control("start")
            var ready = false
            for _ in 0..<10 where !ready {
                ready = try await client.execute(uri: "/readyz", method: .get) { $0.status == .ok }
            }
            #expect(ready)
            try await client.execute(
                uri: "/gateway/v1/logs", method: .post, headers: [.authorization: "Bearer test-gateway-secret"],
                body: ByteBuffer(string: LogLines.chat("outage-2") + "\n")
            ) { response in
                #expect(response.status == .ok)
            }
        }
    }

    @Test(
        "PostgreSQL restarted (-m fast) under 4 ingesting clients: 503 with a tid while down, recovery without a server restart, nothing lost or charged twice"
    )
    func restartUnderLoad() async throws {
        let initialQuota: Int64 = 1_000_000_000_000
        let users = 20
        let db = try await TestDatabase.create("pgrestart")
        try await db.prepareBilling(users: users, quota: initialQuota)
        let server = try ServerProcess(databaseURL: db.url, gatewaySecret: "restart-test-secret")
        let pid = server.pid
        var options = IngestLoad.Options()
        options.users = users
        options.seed = UInt64.random(in: 1...UInt64(UInt32.max))
        let load = IngestLoad(baseURL: server.baseURL, secret: server.gatewaySecret, options: options)
        let loading = Switch()
        async let finished = load.run(while: { loading.isOn })
        let loaded = try await waitUntil { load.snapshot.batchesAcked >= 3 }

        // Stopped (-m fast) and started again rather than `restart`: the cluster stays down until
        // both a /readyz probe and an ingest batch have met the outage, however loaded the machine.
        let probing = Switch(), probe = ReadinessProbe()
        let probeTask = Task { await probe.run(server.baseURL, while: { probing.isOn }) }
        let stopped = await offThePool { Result { try TestCluster.control("stop") } }
        let outageSeen = try await waitUntil(timeout: .seconds(120)) {
            load.snapshot.unavailable > 0 && probe.outages > 0
        }
        let started = await offThePool { Result { try TestCluster.control("start") } }
        let recovered = try await waitUntil(timeout: .seconds(120)) {
            (try? await HTTP.sendAsync("GET", "\(server.baseURL)/readyz", timeout: 5).status) == 200
        }
        probing.turnOff()
        await probeTask.value
        let probes = probe.all
        // Ingest works again through the same process: more batches are acknowledged.
        let ackedAtRecovery = load.snapshot.batchesAcked
        let ingestRecovered = try await waitUntil(timeout: .seconds(120)) {
            load.snapshot.batchesAcked >= ackedAtRecovery + 3
        }
        loading.turnOff()
        let report = await finished
        let pidAfter = server.isRunning ? server.pid : 0
        server.stop()
        _ = try stopped.get()
        _ = try started.get()

        let outages = probes.filter { $0.status != 200 }
        print(
            "PostgreSQL restart under load (seed \(options.seed)): /readyz probed \(probes.count)×, \(outages.count) answered 503; "
                + "ingest: \(report.batchesAcked) batches acknowledged, \(report.unavailable) answered 503 and were retried"
        )
        #expect(loaded, "the load ran before the outage")
        #expect(outageSeen, "no /readyz probe and ingest batch met the outage")
        #expect(recovered && ingestRecovered)
        #expect(pidAfter == pid, "the same server process served throughout")
        #expect(!outages.isEmpty, "no /readyz probe fell into the outage")
        for outage in outages {
            #expect(
                outage.status == 503 && outage.error?.code == "database_unavailable"
                    && outage.error?.tidIsValid == true,
                "\(outage.status) \(String(describing: outage.error))")
        }
        #expect(report.unavailable > 0, "no ingest batch fell into the outage")
        #expect(report.connectionErrors == 0, "the server itself stayed up")
        #expect(report.unexpected.isEmpty, "\(report.unexpected.prefix(10))")
        // The suite's own pool lost its connections in the restart.
        let reopened = db.reopened()
        let figures = try await IngestInvariants.check(
            reopened, acked: report.acked, users: users, initialQuota: initialQuota)
        await reopened.pool.close()
        print("  \(figures)")
        #expect(figures.isClean, "\(figures) \(figures.usersMischarged.prefix(5)) \(figures.auditOutput)")
    }

    /// The answers of GET /readyz, probed every 10 ms until told to stop.
    final class ReadinessProbe: Sendable {
        private let answers = Mutex<[(status: Int, error: EnvelopeError?)]>([])

        var all: [(status: Int, error: EnvelopeError?)] { answers.withLock { $0 } }
        var outages: Int { answers.withLock { $0.count { $0.status != 200 } } }

        func run(_ baseURL: String, while keepGoing: @Sendable () -> Bool) async {
            while keepGoing() {
                if let answer = try? await HTTP.sendAsync("GET", "\(baseURL)/readyz", timeout: 5) {
                    let error = answer.status == 200 ? nil : EnvelopeError(answer.body)
                    answers.withLock { $0.append((answer.status, error)) }
                }
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
    }
}
