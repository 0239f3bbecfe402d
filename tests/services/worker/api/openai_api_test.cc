// Request validation, response shapes, SSE framing and UTF-8 streaming of
// the OpenAI-compatible API. Expected values are written out by hand.
#include "worker/api/openai_api.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/core/options.h"

namespace krul::worker {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

// The worker's limits check krul_mode against its restore modes (as
// http_api.cc does); the wire format alone takes any name.
RequestLimits WorkerLimits() {
  RequestLimits limits;
  limits.check_mode = CanonicalRestoreModeName;
  return limits;
}

std::optional<ChatRequest> Parse(const std::string& body, ApiError* error,
                                 RequestLimits limits = WorkerLimits()) {
  return ParseChatRequest(body, limits, error);
}

// Expects a 400 whose message contains `message_part` and whose param is
// `param`.
void ExpectRejected(const std::string& body, const std::string& param,
                    const std::string& message_part) {
  SCOPED_TRACE(body);
  ApiError error;
  EXPECT_FALSE(Parse(body, &error).has_value());
  EXPECT_EQ(error.http_status, 400);
  EXPECT_EQ(error.type, "invalid_request_error");
  EXPECT_EQ(error.param, param);
  EXPECT_THAT(error.message, HasSubstr(message_part));
}

TEST(ParseChatRequestTest, AcceptsAMinimalRequestWithDefaults) {
  ApiError error;
  auto r = Parse(R"({"messages":[{"role":"user","content":"Hi"}]})", &error);
  ASSERT_TRUE(r.has_value()) << error.message;
  ASSERT_EQ(r->messages.size(), 1u);
  EXPECT_EQ(r->messages[0].role, Role::kUser);
  EXPECT_EQ(r->messages[0].content, "Hi");
  EXPECT_EQ(r->max_tokens, 64);
  EXPECT_FLOAT_EQ(r->temperature, 1.0f);
  EXPECT_FLOAT_EQ(r->top_p, 1.0f);
  EXPECT_FALSE(r->seed.has_value());
  EXPECT_FALSE(r->stream);
  EXPECT_TRUE(r->conversation_id.empty());
}

TEST(ParseChatRequestTest, ReadsEveryField) {
  ApiError error;
  auto r = Parse(R"({
    "model": "krul12L",
    "messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": "Hi!"},
      {"role": "user", "content": "Again"}
    ],
    "max_completion_tokens": 12, "temperature": 0.5, "top_p": 0.9, "seed": 7,
    "stream": true, "stream_options": {"include_usage": true}, "n": 1,
    "user": "u-1", "krul_mode": "cake", "return_token_ids": true,
    "presence_penalty": 0, "frequency_penalty": 0, "stop": null, "tools": []
  })",
                 &error);
  ASSERT_TRUE(r.has_value()) << error.message;
  EXPECT_EQ(r->model, "krul12L");
  ASSERT_EQ(r->messages.size(), 4u);
  EXPECT_EQ(r->messages[0].role, Role::kSystem);
  EXPECT_EQ(r->messages[1].content, "Hello there");
  EXPECT_EQ(r->messages[2].role, Role::kAssistant);
  EXPECT_EQ(r->max_tokens, 12);
  EXPECT_FLOAT_EQ(r->temperature, 0.5f);
  EXPECT_FLOAT_EQ(r->top_p, 0.9f);
  EXPECT_EQ(r->seed, 7u);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_EQ(r->conversation_id, "u-1");  // `user` stands in for conversation_id
  EXPECT_EQ(r->mode, "cake");
  EXPECT_TRUE(r->return_token_ids);
}

TEST(ParseChatRequestTest, KrulModeIsCanonicalOnlyWithTheWorkersCheck) {
  const std::string body =
      R"({"messages":[{"role":"user","content":"x"}],"krul_mode":"krul_fixed"})";
  ApiError error;
  auto checked = Parse(body, &error);
  ASSERT_TRUE(checked.has_value()) << error.message;
  EXPECT_EQ(checked->mode, "krul-fixed");
  // The wire format alone takes the name as sent; the worker core checks it.
  auto unchecked = Parse(R"({"messages":[{"role":"user","content":"x"}],"krul_mode":"fast"})",
                         &error, RequestLimits{});
  ASSERT_TRUE(unchecked.has_value()) << error.message;
  EXPECT_EQ(unchecked->mode, "fast");
}

TEST(ParseChatRequestTest, ConversationIdWinsOverUser) {
  ApiError error;
  auto r = Parse(R"({"messages":[{"role":"user","content":"x"}],"user":"u","conversation_id":"c"})",
                 &error);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->conversation_id, "c");
}

TEST(ParseChatRequestTest, RejectsMalformedBodies) {
  ExpectRejected("{not json", "", "not valid JSON");
  ExpectRejected("[1,2]", "", "must be a JSON object");
  ExpectRejected("{}", "messages", "'messages' is required");
  ExpectRejected(R"({"messages": "hi"})", "messages", "must be an array");
  ExpectRejected(R"({"messages": []})", "messages", "is empty");
  ExpectRejected(R"({"messages": [42]})", "messages[0]", "must be an object");
}

TEST(ParseChatRequestTest, RejectsBadRolesAndContent) {
  ExpectRejected(R"({"messages":[{"content":"x"}]})", "messages[0].role", "missing");
  ExpectRejected(R"({"messages":[{"role":"tool","content":"x"}]})", "messages[0].role",
                 "'tool' is not supported");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"},{"role":"robot","content":"y"}]})",
                 "messages[1].role", "'robot'");
  ExpectRejected(R"({"messages":[{"role":"user"}]})", "messages[0].content", "missing");
  ExpectRejected(R"({"messages":[{"role":"user","content":5}]})", "messages[0].content",
                 "must be a string or an array");
  ExpectRejected(
      R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]})",
      "messages[0].content[0]", "'image_url' is not supported");
  ExpectRejected(
      R"({"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y"}]})",
      "messages[1].role", "last message");
}

TEST(ParseChatRequestTest, RejectsOutOfRangeNumbers) {
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":0})", "max_tokens",
                 "must be in [1, 4096]");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":1000000000000})",
                 "max_tokens", "must be in [1, 4096]");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":1.5})", "max_tokens",
                 "must be an integer");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":"10"})", "max_tokens",
                 "must be an integer");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"temperature":3})", "temperature",
                 "[0, 2]");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"temperature":"hot"})",
                 "temperature", "must be a number");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"top_p":0})", "top_p", "(0, 1]");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"n":2})", "n", "only n = 1");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"stream":"yes"})", "stream",
                 "must be a boolean");
}

TEST(ParseChatRequestTest, RejectsUnsupportedFeatures) {
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"stop":["\n"]})", "stop",
                 "not supported");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]})",
                 "tools", "not supported");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"logprobs":true})", "logprobs",
                 "not supported");
  ExpectRejected(
      R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}})",
      "response_format", "only response_format");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"stream_options":{}})",
                 "stream_options", "only allowed with stream");
  ExpectRejected(R"({"messages":[{"role":"user","content":"x"}],"krul_mode":"fast"})", "krul_mode",
                 "unknown restore mode 'fast'");
}

TEST(ParseChatRequestTest, EnforcesLimits) {
  RequestLimits limits;
  limits.max_messages = 2;
  limits.max_content_bytes = 4;
  ApiError error;
  EXPECT_FALSE(ParseChatRequest(
      R"({"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"},{"role":"user","content":"c"}]})",
      limits, &error));
  EXPECT_EQ(error.param, "messages");
  EXPECT_FALSE(
      ParseChatRequest(R"({"messages":[{"role":"user","content":"abcde"}]})", limits, &error));
  EXPECT_EQ(error.param, "messages[0].content");
  limits.default_max_tokens = 9;
  auto r = ParseChatRequest(R"({"messages":[{"role":"user","content":"abcd"}]})", limits, &error);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->max_tokens, 9);
}

TEST(ApiErrorTest, MapsStatusCodesToHttp) {
  EXPECT_EQ(ApiErrorFromStatus(absl::InvalidArgumentError("x")).http_status, 400);
  EXPECT_EQ(ApiErrorFromStatus(absl::NotFoundError("x")).http_status, 404);
  const ApiError busy = ApiErrorFromStatus(absl::ResourceExhaustedError("busy"));
  EXPECT_EQ(busy.http_status, 429);
  EXPECT_EQ(busy.type, "rate_limit_error");
  EXPECT_EQ(ApiErrorFromStatus(absl::UnavailableError("x")).http_status, 503);
  EXPECT_EQ(ApiErrorFromStatus(absl::InternalError("x")).http_status, 500);
  const json j = busy.ToJson();
  EXPECT_EQ(j["error"]["message"], "busy");
  EXPECT_EQ(j["error"]["type"], "rate_limit_error");
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_EQ(j["error"]["code"], "queue_full");
  // A prompt beyond the context carries OpenAI's code for it.
  const ApiError too_long = ApiErrorFromStatus(
      absl::InvalidArgumentError("context_length_exceeded: the conversation is 300 tokens"));
  EXPECT_EQ(too_long.http_status, 400);
  EXPECT_EQ(too_long.ToJson()["error"]["code"], "context_length_exceeded");
  EXPECT_EQ(too_long.ToJson()["error"]["param"], "messages");
  EXPECT_TRUE(ApiErrorFromStatus(absl::InvalidArgumentError("bad max_tokens")).code.empty());
}

TEST(ResponseJsonTest, CompletionHasTheOpenAiShapeAndKrulExtras) {
  CompletionStats s;
  s.prompt_tokens = 10;
  s.completion_tokens = 3;
  s.ttft_ms = 1.5;
  s.mode = "krul";
  s.restore = "hit";
  s.restored_tokens = 8;
  s.recomputed_tokens = 2;
  s.loaded_tokens = 6;
  const std::vector<int> ids = {5, 6, 7};
  const json j = MakeCompletionJson("chatcmpl-1", 1700000000, "m", "abc", "stop", s, &ids);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"], "chatcmpl-1");
  EXPECT_EQ(j["created"], 1700000000);
  EXPECT_EQ(j["model"], "m");
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "abc");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 10);
  EXPECT_EQ(j["usage"]["completion_tokens"], 3);
  EXPECT_EQ(j["usage"]["total_tokens"], 13);
  EXPECT_EQ(j["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
  EXPECT_EQ(j["usage"]["ttft_ms"], 1.5);
  EXPECT_EQ(j["usage"]["restore_mode"], "krul");
  EXPECT_EQ(j["usage"]["restored_tokens"], 8);
  EXPECT_EQ(j["usage"]["recomputed_tokens"], 2.0);
  EXPECT_EQ(j["usage"]["loaded_tokens"], 6.0);
  EXPECT_EQ(j["krul"]["restore"], "hit");
  EXPECT_EQ(j["krul"]["completion_token_ids"], json::array({5, 6, 7}));
  const json no_ids = MakeCompletionJson("c", 0, "m", "", "length", s, nullptr);
  EXPECT_FALSE(no_ids["krul"].contains("completion_token_ids"));
}

TEST(ResponseJsonTest, ChunkCarriesOnlyTheGivenDeltaFields) {
  const json first =
      MakeChunkJson("c", 1, "m", std::string("assistant"), std::string(""), std::nullopt);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const json last = MakeChunkJson("c", 1, "m", std::nullopt, std::nullopt, std::string("stop"));
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
}

TEST(SseTest, FramesEventsAsDataLinesEndedByABlankLine) {
  EXPECT_EQ(SseEvent(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(SseDone(), "data: [DONE]\n\n");
  // Newlines inside strings are escaped, so one event is one data line.
  EXPECT_EQ(SseEvent(json{{"t", "x\ny"}}), "data: {\"t\":\"x\\ny\"}\n\n");
  // Invalid UTF-8 cannot break the framing or throw.
  EXPECT_EQ(SseEvent(json{{"t", std::string("\xff")}}), "data: {\"t\":\"\xEF\xBF\xBD\"}\n\n");
}

TEST(SseTest, ParsesWhatItFrames) {
  const std::string stream = "data: {\"a\":1}\n\n: comment\n\ndata: [DONE]\n\n";
  EXPECT_EQ(ParseSseData(stream), (std::vector<std::string>{"{\"a\":1}", "[DONE]"}));
  // CRLF line ends and multi-line data (joined with \n), per the SSE spec.
  EXPECT_EQ(ParseSseData("data: a\r\ndata: b\r\n\r\ndata:c\n\n"),
            (std::vector<std::string>{"a\nb", "c"}));
  // A last event without its blank line still counts.
  EXPECT_EQ(ParseSseData("data: x"), (std::vector<std::string>{"x"}));
}

TEST(Utf8StreamTest, HoldsBackSplitCharacters) {
  Utf8Stream s;
  // "é" = C3 A9, "€" = E2 82 AC, split across appends.
  EXPECT_EQ(s.Append("a\xC3"), "a");
  EXPECT_EQ(s.Append("\xA9\xE2"), "\xC3\xA9");
  EXPECT_EQ(s.Append("\x82"), "");
  EXPECT_EQ(s.Append("\xAC!"), "\xE2\x82\xAC!");
  EXPECT_EQ(s.Finish(), "");
}

TEST(Utf8StreamTest, ReplacesInvalidBytes) {
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(SanitizeUtf8("a\xFFz"), "a" + r + "z");
  EXPECT_EQ(SanitizeUtf8("\xC3z"), r + "z");           // lead without continuation
  EXPECT_EQ(SanitizeUtf8("\x80"), r);                  // stray continuation
  EXPECT_EQ(SanitizeUtf8("\xC0\xAF"), r + r);          // overlong: C0 never starts a char
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), r + r + r);  // surrogate
  EXPECT_EQ(SanitizeUtf8("ok\xE2\x82"), "ok" + r);     // truncated at the end
  Utf8Stream s;
  EXPECT_EQ(s.Append("x\xF0\x9F"), "x");
  EXPECT_EQ(s.Finish(), r);
}

TEST(Utf8StreamTest, SplitDoesNotChangeTheResult) {
  const std::string text = "h\xC3\xA9llo \xE2\x82\xAC\xFF \xF0\x9F\x98\x80 \xC3";
  const std::string whole = SanitizeUtf8(text);
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    Utf8Stream s;
    std::string out = s.Append(text.substr(0, cut));
    out += s.Append(text.substr(cut));
    out += s.Finish();
    EXPECT_EQ(out, whole) << "cut at " << cut;
  }
}

}  // namespace
}  // namespace krul::worker
