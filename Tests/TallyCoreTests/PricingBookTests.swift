import Foundation
import Testing

@testable import TallyCore

@Suite("Price book")
struct PriceBookTests {
    let sheet = Fixtures.designSheet
    let t0 = Date(timeIntervalSince1970: 1_700_000_000)
    let t1 = Date(timeIntervalSince1970: 1_800_000_000)

    var book: PriceBook {
        // Given out of order on purpose.
        PriceBook(versions: [
            PriceVersion(id: 3, effectiveFrom: t1, sheet: sheet),
            PriceVersion(id: 1, effectiveFrom: t0, sheet: sheet),
            PriceVersion(id: 7, effectiveFrom: t1, sheet: sheet),
            PriceVersion(id: 5, effectiveFrom: t1, sheet: sheet),
        ])
    }

    @Test func beforeTheFirstVersionThereIsNone() {
        #expect(book.version(at: t0.addingTimeInterval(-0.001)) == nil)
        #expect(book.version(at: .distantPast) == nil)
    }

    @Test func exactlyAtEffectiveFrom() {
        #expect(book.version(at: t0)?.id == 1)
        #expect(book.version(at: t1)?.id == 7)
    }

    @Test func justBeforeAndAfter() {
        #expect(book.version(at: t1.addingTimeInterval(-0.001))?.id == 1)
        #expect(book.version(at: t0.addingTimeInterval(0.001))?.id == 1)
        #expect(book.version(at: t1.addingTimeInterval(0.001))?.id == 7)
        #expect(book.version(at: .distantFuture)?.id == 7)
    }

    @Test func tiesPickTheGreatestID() {
        #expect(book.versions.map(\.id) == [1, 3, 5, 7])
        #expect(book.latest?.id == 7)
    }

    @Test func emptyBook() {
        #expect(PriceBook(versions: []).version(at: t0) == nil)
        #expect(PriceBook(versions: []).latest == nil)
    }

    @Test func manyVersionsAgreeWithALinearScan() {
        var generator = SplitMix64(seed: 42)
        let versions = (0..<300).map { index in
            PriceVersion(
                id: Int64(index), effectiveFrom: Date(timeIntervalSince1970: Double(generator.int(0...100))),
                sheet: sheet)
        }
        let book = PriceBook(versions: versions)
        for second in -1...101 {
            let time = Date(timeIntervalSince1970: Double(second))
            let expected = versions.filter { $0.effectiveFrom <= time }
                .max { ($0.effectiveFrom, $0.id) < ($1.effectiveFrom, $1.id) }
            #expect(book.version(at: time)?.id == expected?.id, "at \(second)")
        }
    }
}
