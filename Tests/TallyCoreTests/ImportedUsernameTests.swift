import TallyCore
import Testing

@Suite("imported usernames")
struct ImportedUsernameTests {
    @Test("a held name gets the source id, then a counter, until a free one")
    func suffixes() {
        #expect(ImportedUsername.suffixed("alice", sourceID: 2) { _ in false } == "alice~2")
        let taken: Set = ["alice~2", "alice~2~2"]
        #expect(ImportedUsername.suffixed("alice", sourceID: 2) { taken.contains($0) } == "alice~2~3")
    }

    @Test("a name longer than Tally allows is cut so that name and suffix fit 64 characters")
    func cuts() {
        let long = String(repeating: "名", count: 70)
        #expect(!ImportedUsername.fits(long))
        #expect(!ImportedUsername.fits(""))
        #expect(ImportedUsername.fits(String(repeating: "a", count: 64)))
        let name = ImportedUsername.suffixed(long, sourceID: 12_345) { _ in false }
        #expect(name.unicodeScalars.count == 64)
        #expect(name.hasSuffix("名~12345"))
        let second = ImportedUsername.suffixed(long, sourceID: 12_345) { $0 == name }
        #expect(second.unicodeScalars.count == 64 && second.hasSuffix("~12345~2"))
    }
}
