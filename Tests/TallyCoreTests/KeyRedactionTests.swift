import TallyCore
import Testing

@Suite("API keys masked in kept log lines")
struct KeyRedactionTests {
    static func masked(_ text: String) -> String {
        String(decoding: KeyRedaction.masked(Array(text.utf8)), as: UTF8.self)
    }

    static let key = "sk-" + String(repeating: "A1b2C3d4", count: 5) + "Zz9Yy8Xx"

    @Test("the gateway's key member, an sk- key anywhere and a Bearer token keep only their last 6")
    func masksEveryForm() {
        #expect(
            Self.masked(#"{"request_id":"r1","key":"\#(Self.key)","model":"m"}"#)
                == #"{"request_id":"r1","key":"sk-…9Yy8Xx","model":"m"}"#)
        #expect(Self.masked(#"{"key" : "plainKeyWithoutPrefix123456"}"#) == #"{"key" : "…123456"}"#)
        #expect(Self.masked(#"{"note":"user pasted \#(Self.key) here"}"#) == #"{"note":"user pasted sk-…9Yy8Xx here"}"#)
        #expect(
            Self.masked(#"{"headers":{"authorization":"Bearer tok_0123456789abcdef"}}"#)
                == #"{"headers":{"authorization":"Bearer …abcdef"}}"#)
        #expect(Self.masked("not json at all: key=\(Self.key)") == "not json at all: key=sk-…9Yy8Xx")
    }

    @Test("masking twice changes nothing, and short values, words ending in sk- and other members stay")
    func leavesTheRest() {
        let once = Self.masked(#"{"key":"\#(Self.key)","h":"bearer \#(Self.key)","t":"\#(Self.key)"}"#)
        #expect(Self.masked(once) == once)
        #expect(!once.contains("A1b2C3d4"))
        for kept in [
            #"{"key":"sk-short"}"#, #"{"key":"abc"}"#, #"{"task-sk-0123456789":1}"#, #"{"monkey":"value1234567"}"#,
            #"{"key":"esc\"aped1234"}"#, "Bearer short",
        ] {
            #expect(Self.masked(kept) == kept, "\(kept)")
        }
    }
}
