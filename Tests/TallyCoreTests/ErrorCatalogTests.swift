import TallyCore
import Testing

@Suite("error catalog, envelopes and tids")
struct ErrorCatalogTests {
    @Test("substitutions fill {last6} and {model} only where the template has them")
    func substitutions() {
        #expect(
            APIError(.ipNotAllowed, last6: "XyZ123").message
                == "Forbidden \u{2013} key(XyZ123) allowed only from approved IP ranges.")
        #expect(
            APIError(.rateLimited, model: "claude-sonnet-4").message
                == "The claude-sonnet-4 model Too many requests; please try again later.")
        #expect(APIError(.accountSuspended, last6: "XyZ123", model: "m").message == "Account suspended.")
        // A value is put in as it is, never searched for placeholders itself.
        #expect(
            APIError(.rateLimited, model: "{last6}{model}").message
                == "The {last6}{model} model Too many requests; please try again later.")
        for entry in CatalogEntry.allCases {
            let message = entry.message(last6: "XyZ123", model: "gpt-4o")
            #expect(!message.contains("{last6}") && !message.contains("{model}"), "\(entry)")
            #expect(
                message
                    == entry.template.split(separator: "{last6}", omittingEmptySubsequences: false)
                    .joined(separator: "XyZ123").split(separator: "{model}", omittingEmptySubsequences: false)
                    .joined(separator: "gpt-4o"),
                "\(entry)")
        }
    }

    @Test("JSON quoting escapes quotes, backslashes and control characters, and keeps the rest as it is")
    func quoting() {
        #expect(JSONText.quote("Forbidden \u{2013} key(XyZ123)") == "\"Forbidden \u{2013} key(XyZ123)\"")
        #expect(JSONText.quote("") == "\"\"")
        #expect(JSONText.quote("a\"b\\c\nd\re\tf") == #""a\"b\\c\nd\re\tf""#)
        #expect(JSONText.quote("\u{0}\u{1F}\u{7F}é") == #""\u0000\u001f\u007fé""#)
    }

    @Test("both envelopes render the same error with the tid, with JSON escaping")
    func envelopes() {
        let error = APIError.invalidRequest("line 3: \"usage\" must be an object\n")
        #expect(
            ErrorEnvelope.gateway.body(for: error, tid: "abc")
                == #"{"error":{"message":"line 3: \"usage\" must be an object\n","type":"new_api_error","code":"invalid_request","tid":"abc"}}"#
        )
        #expect(
            ErrorEnvelope.systemAPI.body(for: APIError(.accountSuspended), tid: "abc")
                == #"{"success":false,"message":"Account suspended.","code":"account_suspended","tid":"abc"}"#)
        #expect(ErrorEnvelope.forPath("/api/token/") == .systemAPI)
        #expect(ErrorEnvelope.forPath("/v1/models") == .gateway)
        #expect(ErrorEnvelope.forPath("/apix") == .gateway)
        #expect(ErrorEnvelope.forPath("//api//token/") == .systemAPI)  // routed as /api/token/
        #expect(ErrorEnvelope.forPath("/api") == .systemAPI)
        #expect(ErrorEnvelope.forPath("/") == .gateway)
    }

    @Test("tids: traceparent first, then X-Tid, else generated; junk is never echoed")
    func traceIDs() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        #expect(
            TraceID.resolve(traceparent: traceparent, xTid: "0123456789abcdef0123456789abcdef")
                == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(
            TraceID.resolve(traceparent: nil, xTid: "0123456789ABCDEF0123456789ABCDEF")
                == "0123456789abcdef0123456789abcdef")
        let allZero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        for (parent, tid) in [
            (allZero, "short"), ("garbage", "<script>"),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", nil),
        ] {
            let resolved = TraceID.resolve(traceparent: parent, xTid: tid)
            #expect(TraceID.isValid(resolved))
            #expect(resolved != "4bf92f3577b34da6a3ce929d0e0e4736")
        }
        #expect(TraceID.generate() != TraceID.generate())
        let valid = "0123456789abcdef0123456789abcdef"
        #expect(TraceID.isValid(valid))
        for invalid in [
            valid.uppercased(), String(valid.dropLast()), valid + "0", String(valid.dropLast()) + "g",
            String(valid.dropLast(2)) + "é", "",
        ] {
            #expect(!TraceID.isValid(invalid), "\(invalid)")
        }
    }

    @Test("generated tids: 32 lowercase hex digits of 128 bits, distinct across refills of the random pool")
    func generatedTraceIDs() {
        #expect(TraceID.hex(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210) == "0123456789abcdeffedcba9876543210")
        #expect(TraceID.hex(0, 1) == "00000000000000000000000000000001")
        let tids = (0..<1_000).map { _ in TraceID.generate() }  // 256 a refill
        #expect(Set(tids).count == tids.count)
        #expect(tids.allSatisfy(TraceID.isValid))
        // Every digit position takes many values: no byte of the pool is left unfilled.
        for position in 0..<32 {
            let digits = Set(tids.map { Array($0.utf8)[position] })
            #expect(digits.count >= 12, "position \(position)")
        }
        let codes = (0..<100).map { _ in Secrets.newRedemptionCode() }
        #expect(Set(codes).count == codes.count && codes.allSatisfy(TraceID.isValid))
    }

    @Test("API keys: sk- + 48 alphanumerics, unique, masked as sk-… + last 6")
    func apiKeys() {
        let keys = (0..<200).map { _ in Secrets.newAPIKey() }
        #expect(Set(keys).count == keys.count)
        for key in keys {
            #expect(key.hasPrefix("sk-"))
            #expect(key.dropFirst(3).count == 48)
            #expect(key.dropFirst(3).allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber) })
        }
        #expect(Secrets.last6("sk-abcdefXYZ789") == "XYZ789")
        // Found by a review of the import: a short imported secret was kept whole as its "last 6".
        #expect(Secrets.displayTail("sk-" + String(repeating: "a", count: 42) + "XYZ789") == "XYZ789")
        #expect(Secrets.displayTail("test01") == "1")
        #expect(Secrets.displayTail("short-token-0123") == "0123")
        #expect(Secrets.maskedKey(last6: "XYZ789") == "sk-\u{2026}XYZ789")
        #expect(Secrets.newRedemptionCode().count == 32)
    }
}
