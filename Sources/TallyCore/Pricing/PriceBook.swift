import Foundation

/// A stored price version: a sheet and the time from which it prices requests.
public struct PriceVersion: Sendable, Equatable {
    /// The version's id (`price_versions.id`).
    public let id: Int64
    /// From when the version is in force.
    public let effectiveFrom: Date
    /// The sheet.
    public let sheet: PriceSheet

    /// Creates a version.
    public init(id: Int64, effectiveFrom: Date, sheet: PriceSheet) {
        self.id = id
        self.effectiveFrom = effectiveFrom
        self.sheet = sheet
    }
}

/// All price versions, answering which one prices a request made at a given time.
public struct PriceBook: Sendable {
    /// The versions by (effectiveFrom, id) ascending.
    public let versions: [PriceVersion]

    /// Creates a book from versions in any order.
    public init(versions: [PriceVersion]) {
        self.versions = versions.sorted {
            $0.effectiveFrom != $1.effectiveFrom ? $0.effectiveFrom < $1.effectiveFrom : $0.id < $1.id
        }
    }

    /// The version in force at `time`: the greatest `effectiveFrom` ≤ `time`, and among equal
    /// times the greatest id; nil before the first version. O(log n).
    public func version(at time: Date) -> PriceVersion? {
        var low = 0
        var high = versions.count
        while low < high {  // first index whose effectiveFrom > time
            let middle = (low + high) / 2
            if versions[middle].effectiveFrom <= time { low = middle + 1 } else { high = middle }
        }
        return low == 0 ? nil : versions[low - 1]
    }

    /// The newest version (greatest effectiveFrom, then id), if any.
    public var latest: PriceVersion? { versions.last }
}
