import Testing

@testable import TallyCore

@Suite("Relay keys: the key as stored and the channel an admin pins after it")
struct RelayKeyTests {
    @Test("the scheme, the sk- prefix and a -CHANNEL suffix are taken off the key, as new-api does")
    func forms() {
        let plain = RelayKey("sk-abc123")
        #expect(plain?.secret == "sk-abc123" && plain?.channelPin == nil)
        #expect(RelayKey("Bearer abc123")?.secret == "sk-abc123")
        let pinned = RelayKey("  bearer sk-abc123-7 ")
        #expect(pinned?.secret == "sk-abc123" && pinned?.channelPin == "7")
        // new-api reads only the part up to the next dash.
        #expect(RelayKey("sk-abc123-7-x")?.channelPin == "7")
    }

    @Test("a pin is kept as sent, number or not (authorize refuses what names no channel)")
    func malformedPins() {
        for (header, pin) in [("sk-abc-x", "x"), ("sk-abc-", ""), ("sk-abc-0", "0"), ("sk-abc--5", "")] {
            let key = RelayKey(header)
            #expect(key?.secret == "sk-abc" && key?.channelPin == Substring(pin), "\(header)")
        }
    }

    @Test("cut at dash bytes as new-api's strings.Split, whatever characters the dash joins")
    func nonASCII() {
        let accented = RelayKey("\tBearer sk-é\u{301}-1\t")
        #expect(accented?.secret == "sk-é\u{301}" && accented?.channelPin == "1")
        // A combining mark after the dash makes one Character of them: still a cut.
        let combined = RelayKey("sk-abc-\u{301}7")
        #expect(combined?.secret == "sk-abc" && combined?.channelPin.map(String.init) == "\u{301}7")
    }

    @Test("nothing left of the key is no key")
    func empty() {
        for header in ["", "  ", "sk-", "sk--3", "-3", "Bearer sk-"] { #expect(RelayKey(header) == nil, "\(header)") }
    }
}
