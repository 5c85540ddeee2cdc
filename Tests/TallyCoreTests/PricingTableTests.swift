import Foundation
import Testing

@testable import TallyCore

@Suite("Pricing table")
struct PricingTableTests {
    let table = PricingTable(sheet: Fixtures.designSheet)

    @Test func groupsSortedWithRatios() {
        #expect(table.groups.map(\.name) == ["default", "svip", "vip"])
        #expect(table.groups.map(\.ratio) == ["1", "0.6", "0.8"])
        #expect(table.groups.map(\.description) == ["Standard", "", ""])
        #expect(table.groups[1].models == ["gpt-4o", "claude-sonnet-4"])
    }

    @Test func modelsSortedAndLimitedByGroup() {
        #expect(
            table.models.map(\.model) == [
                "claude-sonnet-4", "dall-e-3", "gemini-2.5-pro", "gpt-4o",
                "replicate/flux-schnell", "suno-v4", "veo-3",
            ])
        #expect(table.prices(model: "gpt-4o", group: "svip") != nil)
        #expect(table.prices(model: "veo-3", group: "svip") == nil)
        #expect(table.models.first { $0.model == "veo-3" }?.prices.keys.sorted() == ["default", "vip"])
    }

    @Test func ratioAppliedExactly() {
        #expect(
            table.prices(model: "gpt-4o", group: "vip") == [
                "input": "2", "output": "8", "cached_input": "1", "audio_input": "32", "audio_output": "64",
            ])
        #expect(table.prices(model: "gpt-4o", group: "svip")?["cached_input"] == "0.75")
        #expect(
            table.prices(model: "dall-e-3", group: "vip") == [
                "per_image.1024x1024/standard": "0.032", "per_image.1024x1792/hd": "0.096",
                "per_image.default": "0.032",
            ])
        #expect(
            table.prices(model: "veo-3", group: "default") == [
                "per_video_second.1080p": "0.5", "per_video_second.720p": "0.4",
            ])
        #expect(table.prices(model: "suno-v4", group: "vip") == ["per_call": "0.08"])
    }

    @Test func groupPricesOverrideWithoutRatio() {
        #expect(
            table.prices(model: "claude-sonnet-4", group: "svip") == [
                "input": "2", "output": "10", "cached_input": "0.3", "cache_write": "3.75",
            ])
        #expect(table.prices(model: "claude-sonnet-4", group: "vip")?["input"] == "2.4")
    }

    @Test func tiersListed() {
        #expect(
            table.prices(model: "gemini-2.5-pro", group: "vip") == [
                "input": "1", "output": "8", "tiers.above_200000.input": "2", "tiers.above_200000.output": "12",
            ])
    }

    @Test func jsonShape() throws {
        let small = try Fixtures.sheet(models: "  m: {input: \"1\", kind: chat, endpoint_types: [openai]}")
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = String(decoding: try encoder.encode(PricingTable(sheet: small)), as: UTF8.self)
        #expect(
            json
                == #"{"groups":[{"description":"","name":"default","ratio":"1"},{"description":"","name":"double","ratio":"2"},{"description":"","name":"vip","ratio":"0.8"}],"models":[{"endpoint_types":["openai"],"kind":"chat","model":"m","prices":{"default":{"input":"1"},"double":{"input":"2"},"vip":{"input":"0.8"}}}]}"#
        )
        #expect(try JSONDecoder().decode(PricingTable.self, from: Data(json.utf8)) == PricingTable(sheet: small))
    }

    @Test func defaultSheetTable() throws {
        let table = PricingTable(sheet: try PriceSheet.parse(Fixtures.defaultSheetText()))
        #expect(table.prices(model: "gpt-4o", group: "svip")?["input"] == "1.5")
        #expect(table.models.first { $0.model == "suno-v4" }?.endpointTypes == [])
    }
}
