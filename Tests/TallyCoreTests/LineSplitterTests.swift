import Foundation
import TallyCore
import Testing

/// The body is split as it arrives: any cut into chunks gives the lines of the whole body.
@Suite("batch body splitting, chunk by chunk")
struct LineSplitterTests {
    /// The lines of `body` fed in chunks of `size` bytes, as "number:text".
    static func split(_ body: String, chunk size: Int) throws -> [String] {
        try split(Array(body.utf8), chunk: size)
    }

    static func split(_ bytes: [UInt8], chunk size: Int) throws -> [String] {
        var splitter = LineSplitter()
        var lines: [String] = []
        let emit: LineSplitter.Emit = { lines.append("\($0):\(String(decoding: $1, as: UTF8.self))") }
        for start in stride(from: 0, to: bytes.count, by: size) {
            try bytes[start..<min(start + size, bytes.count)].withUnsafeBufferPointer { try splitter.feed($0, emit) }
        }
        try splitter.finish(emit)
        return lines
    }

    static let cases: [(body: String, lines: [String])] = [
        ("{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\":3}", ["1:{\"a\":1}", "4:{\"b\":2}", "5:{\"c\":3}"]),
        ("\n\n {\"a\":1}\n", ["3: {\"a\":1}"]),
        ("", []),
        (" \n\t\n", []),
        (
            " [ {\"a\":\"x,]}\\\"[\"}, {\"b\":[1,2,{\"c\":\"}\"}]} ,\n{} ] \n",
            ["1:{\"a\":\"x,]}\\\"[\"}", "2:{\"b\":[1,2,{\"c\":\"}\"}]}", "3:{}"]
        ),
        ("[]", []),
        ("[{\"a\":1},]", ["1:{\"a\":1}", "2:"]),
    ]

    @Test("NDJSON and JSON arrays split the same whatever the chunk size, as the whole body")
    func chunkSizesAgree() throws {
        for (body, expected) in Self.cases {
            for size in 1...max(1, body.utf8.count) {
                #expect(try Self.split(body, chunk: size) == expected, "\(body.debugDescription) in chunks of \(size)")
            }
        }
    }

    /// Found by a review: the mark (a .NET writer's, a Notepad file's) made the first line
    /// invalid JSON, and an array's body was read as NDJSON, every line rejected.
    @Test("a UTF-8 byte order mark at the start is skipped, however it is cut; its first bytes alone are content")
    func byteOrderMark() throws {
        let mark: [UInt8] = [0xEF, 0xBB, 0xBF]
        let cases: [(body: [UInt8], lines: [String])] = [
            (mark + Array("{\"a\":1}\n{\"b\":2}".utf8), ["1:{\"a\":1}", "2:{\"b\":2}"]),
            (mark + Array(" [{\"a\":1}]".utf8), ["1:{\"a\":1}"]),
            (mark, []),
            (mark + mark + Array("{}".utf8), ["1:\u{FEFF}{}"]),
            (
                [0xEF, 0xBB] + Array("{}\n{}".utf8),
                ["1:" + String(decoding: [0xEF, 0xBB, 0x7B, 0x7D], as: UTF8.self), "2:{}"]
            ),
            ([0xEF, 0xBB], ["1:" + String(decoding: [0xEF, 0xBB], as: UTF8.self)]),
        ]
        for (body, expected) in cases {
            for size in 1...max(1, body.count) {
                #expect(try Self.split(body, chunk: size) == expected, "\(body) in chunks of \(size)")
            }
        }
    }

    @Test("an array left open or followed by text is malformed, however it is cut")
    func malformedArrays() throws {
        for body in ["[{\"a\":1}", "[{\"a\":1}] x", "[{\"a\":\"]\"}"] {
            for size in 1...body.utf8.count {
                #expect(throws: BatchMalformed.self, "\(body) in chunks of \(size)") {
                    try Self.split(body, chunk: size)
                }
            }
        }
    }
}
