import Foundation
import TallyCore
import TallyTestSupport
import Testing

/// `LogLine.parseLiteLLM`: LiteLLM's `StandardLoggingPayload` read as a gateway line.
@Suite("LiteLLM payload parser")
struct LiteLLMLineTests {
    /// One JSON-array batch as LiteLLM 1.110.2's generic_api logger posted it: a Router call to
    /// the deployment `openai/gpt-4o` (public name `gpt-4o`), a failed call (a mocked 429), and a
    /// call whose prompt was mostly read from the provider's cache. Only the tracebacks' file
    /// paths were shortened.
    static func batch() throws -> [[String: Any]] {
        let url = TestCluster.repositoryRoot.appendingPathComponent("Tests/Fixtures/litellm-1.110.2-batch.json")
        return try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [[String: Any]])
    }

    static func parse(_ object: [String: Any]) throws -> LogLine {
        try parse(String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self))
    }

    static func parse(_ text: String) throws(IngestRejection) -> LogLine {
        let bytes = Array(text.utf8)
        return try bytes.withUnsafeBufferPointer { buffer throws(IngestRejection) in try LogLine.parseLiteLLM(buffer) }
    }

    static func payload(_ callID: String) throws -> [String: Any] {
        try #require(try batch().first { $0["litellm_call_id"] as? String == callID })
    }

    /// A minimal payload with `members` spliced in.
    static func minimal(_ members: String) -> String {
        #"{"litellm_call_id":"call-1","startTime":1793491200,"model":"gpt-4o","status":"success","#
            + #""prompt_tokens":100,"completion_tokens":10\#(members.isEmpty ? "" : ",")\#(members)}"#
    }

    @Test("the real batch: litellm_call_id is the request id, model_group the model, cached tokens read")
    func realBatch() throws {
        #expect(try Self.batch().count == 3)
        let plain = try Self.parse(try Self.payload("7befd9d5-5736-4dec-806c-9a1d78ea5552"))
        #expect(plain.requestID == "7befd9d5-5736-4dec-806c-9a1d78ea5552")
        #expect(plain.model == "gpt-4o")
        #expect(plain.status == 200 && plain.error == nil)
        #expect(plain.kind == .chat)
        // SHA-256 of SyntheticKeys.key(forUser: 1), sent as metadata.user_api_key_hash.
        #expect(plain.keyHash == "2b437af484bb0208e396aac2064a3a5c9cc702b7827f8cbce59f6ed5d39cdf98")
        #expect(plain.usage == Usage(promptTokens: 10, completionTokens: 20))
        #expect(plain.tid == "1cf5635f41874115b24afda63d7e4005")
        #expect(plain.durationMs == 957)
        #expect(abs(try #require(plain.createdAt).timeIntervalSince1970 - 1_796_409_221.507445) < 1e-6)

        let cached = try Self.parse(try Self.payload("7be32a61-5bcc-4b81-a79d-434999b8e246"))
        #expect(cached.requestID == "7be32a61-5bcc-4b81-a79d-434999b8e246")
        #expect(cached.model == "gpt-4o")
        #expect(cached.usage == Usage(promptTokens: 2000, completionTokens: 100, cachedTokens: 1500))

        let failed = try Self.parse(try Self.payload("18a33689-a33d-4edc-8ac4-050465b58a74"))
        #expect(failed.status == 429)
        #expect(failed.error == "provider_rate_limited")
        #expect(failed.usage == Usage())
    }

    @Test("without model_group the provider prefix is dropped, and only that prefix")
    func modelName() throws {
        func model(group: String, model: String, provider: String) throws -> String? {
            let members = #""model_group":\#(group),"model":"\#(model)","custom_llm_provider":"\#(provider)""#
            return try Self.parse(Self.minimal(members)).model
        }
        #expect(try model(group: "null", model: "openai/gpt-4o", provider: "openai") == "gpt-4o")
        #expect(try model(group: #""gpt-4o-public""#, model: "azure/gpt-4o", provider: "azure") == "gpt-4o-public")
        #expect(try model(group: "null", model: "openrouter/openai/o3", provider: "openai") == "openrouter/openai/o3")
        #expect(try model(group: #""""#, model: "bedrock/claude", provider: "bedrock") == "claude")
    }

    @Test("Anthropic-style cache members, audio in and out; prompt_tokens_details wins over the top level")
    func usageDetails() throws {
        let anthropic = try Self.parse(
            Self.minimal(
                #""metadata":{"usage_object":{"prompt_tokens":100,"#
                    + #""cache_read_input_tokens":60,"cache_creation_input_tokens":30}}"#))
        #expect(
            anthropic.usage
                == Usage(
                    promptTokens: 100, completionTokens: 10, cachedTokens: 60,
                    cacheWriteTokens: 30))
        let details = try Self.parse(
            Self.minimal(
                #""metadata":{"usage_object":{"cache_read_input_tokens":60,"#
                    + #""prompt_tokens_details":{"cached_tokens":50,"cache_creation_tokens":20,"audio_tokens":5,"#
                    + #""text_tokens":null},"completion_tokens_details":{"reasoning_tokens":4,"audio_tokens":3}}}"#))
        #expect(
            details.usage
                == Usage(
                    promptTokens: 100, completionTokens: 10, cachedTokens: 50, cacheWriteTokens: 20,
                    audioInputTokens: 5, audioOutputTokens: 3))
        let openAIWrite = try Self.parse(
            Self.minimal(
                #""metadata":{"usage_object":{"prompt_tokens_details":{"cache_write_tokens":7}}}"#))
        #expect(openAIWrite.usage?.cacheWriteTokens == 7)
    }

    @Test("response.usage is read when metadata.usage_object is missing or null; metadata wins otherwise")
    func responseUsage() throws {
        let fromResponse = try Self.parse(
            Self.minimal(
                #""metadata":{"usage_object":null},"#
                    + #""response":{"choices":[{"message":{"content":"{\"usage\":1}"}}],"#
                    + #""usage":{"prompt_tokens_details":{"cached_tokens":40}}}"#))
        #expect(fromResponse.usage?.cachedTokens == 40)
        let both = try Self.parse(
            Self.minimal(
                #""response":{"usage":{"prompt_tokens_details":{"cached_tokens":40}}},"#
                    + #""metadata":{"usage_object":{"prompt_tokens_details":{"cached_tokens":30}}}"#))
        #expect(both.usage?.cachedTokens == 30)
        for response in [#""redacted-by-litellm""#, "[1,2]", "null"] {
            #expect(try Self.parse(Self.minimal(#""response":\#(response)"#)).usage?.cachedTokens == 0)
        }
        // The top-level counts are the payload's own; the nested object only fills them when absent.
        let nestedOnly = try Self.parse(
            #"{"litellm_call_id":"c","model":"gpt-4o","#
                + #""metadata":{"usage_object":{"prompt_tokens":7,"completion_tokens":3}}}"#)
        #expect(nestedOnly.usage == Usage(promptTokens: 7, completionTokens: 3))
    }

    /// Found by a review of the ingest path: absent counts were read as 0 and the call charged
    /// nothing, where a gateway line without usage is refused.
    @Test("a payload without any token count has no usage (ingest: missing_usage); counts of 0 are usage")
    func noCounts() throws {
        let silent = try Self.parse(
            #"{"litellm_call_id":"c","startTime":1793491200,"model":"gpt-4o","status":"success"}"#)
        #expect(silent.usage == nil)
        let nulls = try Self.parse(#"{"litellm_call_id":"c","model":"gpt-4o","prompt_tokens":null,"metadata":{}}"#)
        #expect(nulls.usage == nil)
        let zero = try Self.parse(#"{"litellm_call_id":"c","model":"gpt-4o","prompt_tokens":0,"completion_tokens":0}"#)
        #expect(zero.usage == Usage())
        let nestedEmpty = try Self.parse(#"{"litellm_call_id":"c","model":"gpt-4o","metadata":{"usage_object":{}}}"#)
        #expect(nestedEmpty.usage == nil)
    }

    @Test("failures: error_code as the status (string or number), 500 when it is not a failure status")
    func failures() throws {
        func failure(_ information: String) throws -> LogLine {
            try Self.parse(#"{"litellm_call_id":"c","status":"failure","error_information":\#(information)}"#)
        }
        let rateLimited = try failure(#"{"error_code":"429","error_class":"RateLimitError"}"#)
        #expect(rateLimited.status == 429 && rateLimited.error == "provider_rate_limited")
        let badRequest = try failure(#"{"error_code":400,"error_class":"BadRequestError"}"#)
        #expect(badRequest.status == 400 && badRequest.error == "BadRequestError")
        for information in [#"{"error_code":""}"#, #"{"error_code":"200"}"#, #"{"error_code":"x"}"#, "null", "{}"] {
            let line = try failure(information)
            #expect(line.status == 500, "\(information)")
            #expect(line.error == "upstream_error", "\(information)")
        }
        let success = try Self.parse(Self.minimal(#""error_information":{"error_code":"","error_class":""}"#))
        #expect(success.status == 200 && success.error == nil)
    }

    @Test("request id: litellm_call_id, else id; trace ids that are not UUIDs are dropped")
    func identity() throws {
        let fallback = try Self.parse(#"{"id":"chatcmpl-1","trace_id":"not-a-uuid"}"#)
        #expect(fallback.requestID == "chatcmpl-1")
        #expect(fallback.tid == nil)
        let both = try Self.parse(
            #"{"litellm_call_id":"call-9","id":"chatcmpl-1","#
                + #""trace_id":"1CF5635F-4187-4115-B24A-FDA63D7E4005"}"#)
        #expect(both.requestID == "call-9")
        #expect(both.tid == "1cf5635f41874115b24afda63d7e4005")
    }

    @Test("call types, their async twins included")
    func callTypes() throws {
        let expected: [String: RequestKind] = [
            "completion": .chat, "acompletion": .chat, "anthropic_messages": .chat, "aanthropic_messages": .chat,
            "aresponses": .chat, "aembedding": .embedding, "arerank": .rerank, "aimage_generation": .image,
            "atranscription": .audio, "audio_transcription": .audio, "avideo_generation": .video,
            "acreate_batch": .call, "pass_through_endpoint": .call,
        ]
        for (callType, kind) in expected {
            #expect(try Self.parse(#"{"call_type":"\#(callType)"}"#).kind == kind, "\(callType)")
        }
        #expect(try Self.parse("{}").kind == nil)
    }

    @Test("a nested count of the wrong type refuses the line with its request id")
    func wrongTypes() {
        for members in [
            #""metadata":{"usage_object":{"prompt_tokens_details":{"cached_tokens":-5}}}"#,
            #""metadata":{"usage_object":{"prompt_tokens_details":{"cached_tokens":"5"}}}"#,
            #""response":{"usage":{"completion_tokens_details":{"audio_tokens":1.5}}}"#,
            #""metadata":{"usage_object":[]}"#, #""startTime":"2026-11-01T00:00:00Z""#,
            #""startTime":-1"#,
        ] {
            do {
                _ = try Self.parse(Self.minimal(members))
                Issue.record("accepted \(members)")
            } catch {
                #expect(error.code == "invalid_json", "\(members)")
                #expect(error.requestID == "call-1", "\(members)")
            }
        }
    }
}
