import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
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
                try await client.execute(uri: "/gateway/v1/logs", method: .post, headers: [.authorization: "Bearer test-gateway-secret"],
                                         body: ByteBuffer(string: LogLines.chat("outage-1") + "\n")) { response in
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
            try await client.execute(uri: "/gateway/v1/logs", method: .post, headers: [.authorization: "Bearer test-gateway-secret"],
                                     body: ByteBuffer(string: LogLines.chat("outage-2") + "\n")) { response in
                #expect(response.status == .ok)
            }
        }
    }
}
