import TallyCore
import Testing

@Suite("IP allow-lists")
struct IPAllowListTests {
    @Test("IPv4 and IPv6 addresses and CIDRs parse to their canonical text")
    func canonical() throws {
        let list = try IPAllowList.parse(
            "203.0.113.7, 10.0.0.0/8\n2001:DB8:0:0:0:0:0:0/32 ::1 ::ffff:192.0.2.1 fe80::1:0:0:1/128,10.0.0.0/8")
        #expect(list.text == "203.0.113.7\n10.0.0.0/8\n2001:db8::/32\n::1\n::ffff:192.0.2.1\nfe80::1:0:0:1")
        #expect(try IPAllowList.parse("").isEmpty)
        #expect(try IPAllowList.parse(" \n ").isEmpty)
        #expect(try IPAllowList.parse("0.0.0.0/0").text == "0.0.0.0/0")
        #expect(try IPAllowList.parse("::/0").text == "::/0")
        #expect(try IPAllowList.parse("2001:db8:0:1:0:0:0:1").text == "2001:db8:0:1::1")
        #expect(try IPAllowList.parse("2001:0:0:1:0:0:0:1").text == "2001:0:0:1::1")
    }

    @Test("bad entries are refused, naming the entry and the reason")
    func refusals() {
        let cases: [(String, String)] = [
            ("10.0.0.1/8", "has host bits set; the network is 10.0.0.0/8"),
            ("2001:db8::1/32", "has host bits set; the network is 2001:db8::/32"),
            ("256.0.0.1", "is not an IPv4 or IPv6 address"),
            ("1.2.3", "is not an IPv4 or IPv6 address"),
            ("01.2.3.4", "is not an IPv4 or IPv6 address"),
            ("1.2.3.4/33", "invalid prefix length (0…32 for IPv4)"),
            ("::1/129", "invalid prefix length (0…128 for IPv6)"),
            ("1.2.3.4/", "invalid prefix length"),
            ("1.2.3.4/-1", "invalid prefix length"),
            ("1:2:3:4:5:6:7:8:9", "is not an IPv4 or IPv6 address"),
            ("1::2::3", "is not an IPv4 or IPv6 address"),
            ("fe80::1%eth0", "zone ids"),
            ("example.com", "is not an IPv4 or IPv6 address"),
        ]
        for (entry, reason) in cases {
            #expect(throws: IPParseError.self, "\(entry)") { try IPAllowList.parse(entry) }
            do {
                _ = try IPAllowList.parse(entry)
            } catch {
                #expect(error.description.contains(reason), "\(entry): \(error.description)")
                #expect(error.description.contains(entry))
            }
        }
        let many = (0..<101).map { "10.0.0.\($0 % 256)/32" }.joined(separator: ",")
        #expect(throws: IPParseError.self) { try IPAllowList.parse(many) }
    }

    @Test("membership: v4 ranges, v6 ranges, v4-mapped v6 clients, empty list allows all")
    func membership() throws {
        let list = try IPAllowList.parse("10.0.0.0/8, 192.168.1.7, 2001:db8::/32")
        #expect(list.allows("10.255.3.4"))
        #expect(list.allows("192.168.1.7"))
        #expect(!list.allows("192.168.1.8"))
        #expect(!list.allows("11.0.0.1"))
        #expect(list.allows("2001:db8:ffff::1"))
        #expect(!list.allows("2001:db9::1"))
        #expect(list.allows("::ffff:10.1.2.3"))
        #expect(!list.allows("garbage"))
        #expect(try IPAllowList.parse("").allows("anything"))
        #expect(try IPAllowList.parse("0.0.0.0/0").allows("8.8.8.8"))
        #expect(!(try IPAllowList.parse("0.0.0.0/0").allows("2001:db8::1")))
    }

    @Test("a v4-mapped entry allows its IPv4 client, as in new-api; other IPv6 ranges never hold IPv4")
    func mappedEntries() throws {
        let list = try IPAllowList.parse("::ffff:192.0.2.1, ::ffff:10.0.0.0/104")
        #expect(list.allows("192.0.2.1"))
        #expect(list.allows("::ffff:192.0.2.1"))
        #expect(list.allows("10.9.8.7"))
        #expect(!list.allows("192.0.2.2"))
        #expect(!list.allows("11.0.0.1"))
        #expect(!(try IPAllowList.parse("::/0").allows("192.0.2.1")))
    }

    /// Found by a review: counted address by address, one IPv6 host had a limit per address of its /64.
    @Test("a client's network for the failed-credential limit: IPv4 itself, v4-mapped as IPv4, IPv6 its /64")
    func clientNetworks() throws {
        func network(_ text: String) throws -> String { try #require(IPAddress.parse(text)).clientNetwork }
        #expect(try network("203.0.113.7") == "203.0.113.7")
        #expect(try network("::ffff:203.0.113.7") == "203.0.113.7")
        #expect(try network("2001:db8:1:2::1") == "2001:db8:1:2::/64")
        #expect(try network("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64")
        #expect(try network("2001:db8:1:3::1") == "2001:db8:1:3::/64")
    }

    @Test("model limits allow a model by its name or by the family new-api checks (thinking budgets, GPTs)")
    func modelLimitFamilies() {
        let allowed: Set<String> = ["gpt-4o", "gemini-2.5-flash-thinking-*", "gpt-4-gizmo-*", "gemini-2.5-pro-x"]
        #expect(ModelNames.limitsAllow(allowed, "gpt-4o"))
        #expect(ModelNames.limitsAllow(allowed, "gemini-2.5-flash-thinking-1024"))
        #expect(!ModelNames.limitsAllow(allowed, "gemini-2.5-flash"), "no thinking budget: its own name")
        #expect(!ModelNames.limitsAllow(allowed, "gemini-2.5-flash-lite-thinking-512"), "another family")
        #expect(ModelNames.limitsAllow(allowed, "gpt-4-gizmo-g-2fkFE8rbu"))
        #expect(!ModelNames.limitsAllow(allowed, "gpt-4o-gizmo-g-2fkFE8rbu"))
        #expect(ModelNames.limitsAllow(allowed, "gemini-2.5-pro-x"), "listed as it is")
        #expect(!ModelNames.limitsAllow(allowed, "gpt-4o-mini"))
    }

    @Test("model lists: trimmed, de-duplicated, commas and control characters refused")
    func modelLists() throws {
        #expect(
            try ModelNames.parseList(" gpt-4o, claude-sonnet-4,,gpt-4o\nflux ", field: "model_limits") == [
                "gpt-4o", "claude-sonnet-4", "flux",
            ])
        #expect(throws: ModelNameError.self) { try ModelNames.validate(["a,b"], field: "models") }
        #expect(throws: ModelNameError.self) {
            try ModelNames.validate([String(repeating: "m", count: 201)], field: "models")
        }
        #expect(ModelNames.inferredEndpointTypes("dall-e-3") == ["image-generation"])
        #expect(ModelNames.inferredEndpointTypes("gemini-2.5-pro") == ["gemini", "openai"])
        #expect(ModelNames.inferredEndpointTypes("veo-3") == ["openai-video"])
        #expect(ModelNames.inferredOwner("replicate/flux-schnell") == "replicate")
        #expect(ModelNames.inferredOwner("my-model") == "custom")
    }
}
