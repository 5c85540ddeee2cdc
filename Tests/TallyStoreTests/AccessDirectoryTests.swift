import Foundation
import TallyTestSupport
import Testing

@testable import TallyStore

@Suite("the access directory's key cache")
struct AccessDirectoryTests {
    /// Every header a client sends is a lookup, and one that names no key is cached (for 5 s) as
    /// unknown: a client sending random headers grew the cache for good.
    @Test("keys past their time are swept out as new ones come, so random headers cannot grow the cache for good")
    func unknownKeysSwept() async throws {
        let db = try await TestDatabase.create("access-directory")
        let directory = AccessDirectory(pool: db.pool, ttl: 60, unknownTTL: 5)
        let start = Date()
        func lookUp(_ count: Int, at now: Date) async throws {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<count {
                    let hash = SecretHash(of: "sk-\(UUID().uuidString)")
                    group.addTask {
                        let access = try await directory.key(hash, now: now)
                        #expect(access == nil)
                    }
                }
                try await group.waitForAll()
            }
        }
        try await lookUp(3_000, at: start)
        #expect(directory.cachedKeys == 3_000)
        // Ten seconds on, the first 3,000 are past their time: the sweep that the next lookups
        // bring drops them.
        try await lookUp(3_000, at: start.addingTimeInterval(10))
        #expect(directory.cachedKeys == 3_000)
    }
}
