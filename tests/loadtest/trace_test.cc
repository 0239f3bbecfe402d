// The trace parsers on the real sample files in the shared data folder and
// on malformed input. Expected values were read off the files by hand (head,
// tail, sed -n) or are counted here with a method other than the parser's
// (std::getline, substring search); the Mooncake conversation counts come
// from a separate Python implementation of the next-turn rule in trace.h.
#include "trace/trace.h"

#include <fstream>
#include <regex>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_support/test_data.h"
#include "trace/prompt_synth.h"

namespace krul::loadtest {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

Trace LoadOrDie(const std::string& path, TraceFormat format = TraceFormat::kAuto,
                BadRecordPolicy policy = BadRecordPolicy::kFail) {
  TraceOptions options;
  options.on_bad_record = policy;
  auto trace = LoadTrace(path, format, options);
  EXPECT_TRUE(trace.ok()) << trace.status();
  return trace.ok() ? *std::move(trace) : Trace{};
}

// Lines of a file, "\r" kept, read without the parsers' helpers.
std::vector<std::string> RawLines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

// The integers of the JSON array after "key": in `line`, by regex.
std::vector<uint64_t> IdsOf(const std::string& line) {
  std::vector<uint64_t> ids;
  const size_t open = line.find("\"hash_ids\": [");
  const size_t close = line.find(']', open);
  const std::string body = line.substr(open + 13, close - open - 13);
  std::regex number(R"(\d+)");
  for (auto it = std::sregex_iterator(body.begin(), body.end(), number);
       it != std::sregex_iterator(); ++it) {
    ids.push_back(std::stoull(it->str()));
  }
  return ids;
}

// The conversation holding trace record `record`, and the turn's index.
std::pair<const Conversation*, int> FindRecord(const Trace& trace, int record) {
  for (const Conversation& c : trace.conversations) {
    for (size_t t = 0; t < c.turns.size(); ++t) {
      if (c.turns[t].record == record) return {&c, static_cast<int>(t)};
    }
  }
  return {nullptr, -1};
}

std::string WriteScratch(const std::string& name, const std::string& text) {
  const std::string path = krul::testing::ScratchDir() + "/" + name;
  krul::testing::WriteFileOrDie(path, text);
  return path;
}

// ---- Mooncake -----------------------------------------------------------

TEST(MooncakeTraceTest, ConversationTraceRecordsAndFields) {
  KRUL_REQUIRE_DATA_FILE(path, "traces/mooncake_conversation_trace.jsonl");
  const Trace trace = LoadOrDie(path);
  EXPECT_EQ(trace.format, TraceFormat::kMooncake);
  const std::vector<std::string> lines = RawLines(path);
  ASSERT_EQ(lines.size(), 12031u);  // MANIFEST.md: 12,031 records
  EXPECT_EQ(trace.records, static_cast<int>(lines.size()));
  EXPECT_EQ(trace.skipped, 0);
  EXPECT_EQ(trace.turns(), 12031);
  EXPECT_TRUE(trace.timed());

  // First record (line 1): {"timestamp": 0, "input_length": 6758,
  // "output_length": 500, "hash_ids": [0, 1, ..., 13]}.
  auto [first, first_turn] = FindRecord(trace, 0);
  ASSERT_NE(first, nullptr);
  ASSERT_EQ(first_turn, 0);
  const Turn& t0 = first->turns[0];
  EXPECT_EQ(t0.line, 1);
  EXPECT_EQ(*t0.arrival_ms, 0);
  EXPECT_EQ(t0.input_tokens, 6758);
  EXPECT_EQ(t0.output_tokens, 500);
  EXPECT_EQ(t0.message_tokens, 6758);
  ASSERT_EQ(t0.blocks.size(), 14u);
  EXPECT_EQ(t0.blocks[0], (PromptBlock{0, 512}));
  EXPECT_EQ(t0.blocks[13], (PromptBlock{13, 6758 - 13 * 512}));

  // Last record (line 12031): timestamp 3536999, input 20774, output 508,
  // 41 blocks ending with 182789.
  auto [last, last_turn] = FindRecord(trace, 12030);
  ASSERT_NE(last, nullptr);
  const Turn& tl = last->turns[last_turn];
  EXPECT_EQ(tl.line, 12031);
  EXPECT_EQ(*tl.arrival_ms, 3536999);
  EXPECT_EQ(tl.input_tokens, 20774);
  EXPECT_EQ(tl.output_tokens, 508);
  EXPECT_EQ(IdsOf(lines.back()).size(), 41u);
  EXPECT_EQ(tl.blocks.back().id, 182789u);
  EXPECT_EQ(tl.blocks.back().tokens, 20774 - 40 * 512);
}

TEST(MooncakeTraceTest, ConversationTraceNextTurnsFollowBlockPrefixes) {
  KRUL_REQUIRE_DATA_FILE(path, "traces/mooncake_conversation_trace.jsonl");
  const Trace trace = LoadOrDie(path);
  const std::vector<std::string> lines = RawLines(path);
  // Every record shares block 0 (a common system prompt), yet it must not
  // chain the trace into one conversation.
  EXPECT_EQ(trace.conversations.size(), 8105u);

  // Records 3 -> 1585 -> 1900 -> 2199 (0-based): each one's complete
  // blocks begin the next one's blocks.
  const std::vector<int> chain = {3, 1585, 1900, 2199};
  for (size_t i = 0; i + 1 < chain.size(); ++i) {
    const std::vector<uint64_t> a = IdsOf(lines[chain[i]]);
    const std::vector<uint64_t> b = IdsOf(lines[chain[i + 1]]);
    ASSERT_GT(b.size(), a.size() - 1);
    // Complete blocks of `a`: input_length / 512 (2290, 2615, 3082 tokens).
    const size_t full = (i == 0 ? 2290 : i == 1 ? 2615 : 3082) / 512;
    EXPECT_TRUE(std::equal(a.begin(), a.begin() + full, b.begin())) << chain[i];
  }
  auto [conversation, turn] = FindRecord(trace, 3);
  ASSERT_NE(conversation, nullptr);
  ASSERT_EQ(conversation->turns.size(), 4u);
  for (size_t i = 0; i < chain.size(); ++i) EXPECT_EQ(conversation->turns[i].record, chain[i]);
  // Turn 2 adds input 2615 - (2290 + 316 answer) = 9 tokens, from block 4 on.
  const Turn& second = conversation->turns[1];
  EXPECT_EQ(second.message_tokens, 2615 - 2290 - 316);
  EXPECT_EQ(second.blocks.front().id, IdsOf(lines[1585])[4]);
  EXPECT_EQ(*second.arrival_ms, 545999);

  // 896 -> 1734: 6656 tokens (13 complete blocks), then 12667.
  auto [c896, t896] = FindRecord(trace, 896);
  ASSERT_NE(c896, nullptr);
  ASSERT_GT(c896->turns.size(), static_cast<size_t>(t896 + 1));
  const Turn& next = c896->turns[t896 + 1];
  EXPECT_EQ(next.record, 1734);
  EXPECT_EQ(next.blocks.size(), 25u - 13u);
  EXPECT_EQ(next.message_tokens, 12667 - 6656 - 431);
}

TEST(MooncakeTraceTest, SharedBlocksSynthesizeIdenticalText) {
  KRUL_REQUIRE_DATA_FILE(path, "traces/mooncake_conversation_trace.jsonl");
  const Trace trace = LoadOrDie(path);
  // Records 0 and 1 share block 0 only ([0, 1, ...] and [0, 14, ...]).
  const Turn& a = FindRecord(trace, 0).first->turns[0];
  const Turn& b = FindRecord(trace, 1).first->turns[0];
  ASSERT_EQ(a.blocks[0].id, b.blocks[0].id);
  ASSERT_NE(a.blocks[1].id, b.blocks[1].id);
  SynthOptions options;
  options.length_scale = 1.0 / 64;  // 512-token blocks -> 8 tokens
  options.tokens_per_word = 1.0;
  const PromptSynth synth(options);
  const std::string ta = synth.MessageText(a);
  const std::string tb = synth.MessageText(b);
  const std::string block0 = synth.BlockText(0, 8);
  EXPECT_THAT(ta, StartsWith(block0 + " "));
  EXPECT_THAT(tb, StartsWith(block0 + " "));
  EXPECT_NE(ta.substr(block0.size()), tb.substr(block0.size()));
  // 6758 tokens / 64 = 106 words at one token per word.
  EXPECT_EQ(std::count(ta.begin(), ta.end(), ' ') + 1, 106);
}

TEST(MooncakeTraceTest, SyntheticTraceRecordsAndConversations) {
  KRUL_REQUIRE_DATA_FILE(path, "traces/mooncake_synthetic_trace.jsonl");
  const Trace trace = LoadOrDie(path);
  EXPECT_EQ(trace.records, static_cast<int>(RawLines(path).size()));
  EXPECT_EQ(trace.records, 3993);
  EXPECT_EQ(trace.turns(), 3993);
  EXPECT_EQ(trace.conversations.size(), 2729u);
  // First: {"timestamp": 0, "input_length": 40160, "output_length": 6, ...}.
  const Turn& first = FindRecord(trace, 0).first->turns[0];
  EXPECT_EQ(first.input_tokens, 40160);
  EXPECT_EQ(first.output_tokens, 6);
  EXPECT_EQ(first.blocks.size(), 79u);  // ceil(40160 / 512)
  // Last: timestamp 1022025, input 18440, output 83, first block 17915.
  auto [c, t] = FindRecord(trace, 3992);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(*c->turns[t].arrival_ms, 1022025);
  EXPECT_EQ(c->turns[t].input_tokens, 18440);
  EXPECT_EQ(c->turns[t].output_tokens, 83);
  // Records 15 -> 58 -> 74 -> 90 open the first conversation of 3+ turns.
  auto [c15, t15] = FindRecord(trace, 15);
  ASSERT_NE(c15, nullptr);
  ASSERT_GE(c15->turns.size(), 4u);
  EXPECT_EQ(c15->turns[1].record, 58);
  EXPECT_EQ(c15->turns[2].record, 74);
  EXPECT_EQ(c15->turns[3].record, 90);
}

TEST(MooncakeTraceTest, BadRecordsNameTheLineAndField) {
  const std::string good =
      R"({"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]})";
  struct Case {
    std::string line;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {R"({"timestamp": 1, "input_length": 600, "output_length": 5, "hash_ids": [1]})",
       ":3: field 'hash_ids': has 1 blocks; input_length 600 needs 2"},
      {R"({"timestamp": 1, "input_length": "600", "output_length": 5, "hash_ids": [1, 2]})",
       ":3: field 'input_length': must be a non-negative integer"},
      {R"({"timestamp": -4, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]})",
       ":3: field 'timestamp'"},
      {R"({"input_length": 600, "output_length": 5, "hash_ids": [1, 2]})",
       ":3: field 'timestamp': missing"},
      {R"({"timestamp": 1, "input_length": 600, "output_length": 5, "hash_ids": [1, -2]})",
       ":3: field 'hash_ids': element 1"},
      {R"({"timestamp": 1, "input_length": 600, "output_len)", ":3: not valid JSON"},
      // Found by tests/fuzz: a number beyond a double made the JSON parser
      // throw past ParseJson, and one beyond int64 was converted regardless.
      {R"({"timestamp": 1e400, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]})",
       ":3: not valid JSON: number overflow parsing '1e400'"},
      {R"({"timestamp": 1, "input_length": 31018446744073709551616, "output_length": 5, )"
       R"("hash_ids": [1, 2]})",
       ":3: field 'input_length': must be a non-negative integer"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    const std::string path = WriteScratch("bad.jsonl", good + "\n" + good + "\n" + c.line + "\n");
    auto failed = LoadTrace(path, TraceFormat::kMooncake, {});
    ASSERT_FALSE(failed.ok());
    EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(failed.status().message()), HasSubstr(path + c.expected));
    // Skipping keeps the two good records and names the bad one.
    const Trace skipped = LoadOrDie(path, TraceFormat::kMooncake, BadRecordPolicy::kSkip);
    EXPECT_EQ(skipped.records, 3);
    EXPECT_EQ(skipped.skipped, 1);
    EXPECT_EQ(skipped.turns(), 2);
    ASSERT_EQ(skipped.skip_messages.size(), 1u);
    EXPECT_THAT(skipped.skip_messages[0], HasSubstr(c.expected));
  }
}

// ---- ShareGPT-style JSON ------------------------------------------------

TEST(ShareGptTraceTest, FastChatDummyConversations) {
  KRUL_REQUIRE_DATA_FILE(path, "conversations/fastchat_dummy_conversation.json");
  const Trace trace = LoadOrDie(path);
  EXPECT_EQ(trace.format, TraceFormat::kShareGpt);
  // Counted without the parser: one "id" per conversation, one
  // "from": "human" per turn.
  int ids = 0, humans = 0;
  for (const std::string& line : RawLines(path)) {
    ids += line.find("\"id\":") != std::string::npos;
    humans += line.find("\"from\": \"human\"") != std::string::npos;
  }
  EXPECT_EQ(ids, 500);
  EXPECT_EQ(trace.records, ids);
  EXPECT_EQ(static_cast<int>(trace.conversations.size()), ids);
  EXPECT_EQ(trace.turns(), humans);
  const Conversation& first = trace.conversations.front();
  EXPECT_EQ(first.id, "identity_0");
  ASSERT_EQ(first.turns.size(), 2u);
  EXPECT_EQ(first.turns[0].text, "Who are you?");
  EXPECT_EQ(first.turns[0].line, 2);
  EXPECT_FALSE(first.turns[0].synthesized());
  EXPECT_FALSE(first.turns[0].arrival_ms.has_value());
  const Conversation& last = trace.conversations.back();
  EXPECT_EQ(last.id, "identity_499");
  ASSERT_EQ(last.turns.size(), 1u);
  EXPECT_EQ(last.turns[0].text, "Are you created by Meta?");
  EXPECT_EQ(last.turns[0].line, 10489);
  EXPECT_FALSE(trace.timed());
}

TEST(ShareGptTraceTest, MultiTurnConversationFilesCarryTheirDomain) {
  KRUL_REQUIRE_DATA_FILE(mix, "conversations/krul_mix_conversations.json");
  const Trace trace = LoadOrDie(mix);
  ASSERT_EQ(trace.conversations.size(), 13u);
  EXPECT_EQ(trace.conversations.front().id, "shakespeare-1");
  EXPECT_EQ(trace.conversations.front().domain, "shakespeare");
  EXPECT_EQ(trace.conversations.front().turns[0].text, "KATHARINA:\nLet me entreat you.");
  EXPECT_EQ(trace.conversations.front().turns.size(), 3u);
  const Conversation& last = trace.conversations.back();
  EXPECT_EQ(last.id, "python-9");
  EXPECT_EQ(last.domain, "python");
  EXPECT_EQ(last.turns.back().text, "from struct import unpack as _unpack");
  EXPECT_EQ(last.turns.back().line, 314);
  EXPECT_EQ(trace.turns(), 32);

  KRUL_REQUIRE_DATA_FILE(story, "conversations/krul_story_conversations.json");
  const Trace stories = LoadOrDie(story);
  ASSERT_EQ(stories.conversations.size(), 12u);
  EXPECT_EQ(stories.conversations.front().id, "story-1");
  EXPECT_EQ(stories.conversations.back().id, "story-12");
  EXPECT_EQ(stories.conversations.back().turns.back().text, "Did he find his mom?");
  EXPECT_EQ(stories.turns(), 32);
}

TEST(ShareGptTraceTest, BadRecordsNameTheLine) {
  const std::string path = WriteScratch("bad.json", R"([
  {"id": "a", "conversations": [{"from": "human", "value": "hi"}]},
  {"id": "b",
   "conversations": [{"from": "human", "value": 7}]},
  {"id": "c", "conversations": [{"from": "robot", "value": "x"}]},
  {"id": "d", "conversations": [{"from": "gpt", "value": "only an answer"}]},
  {"id": "a", "conversations": [{"from": "human", "value": "again"}]}
])");
  auto failed = LoadTrace(path, TraceFormat::kAuto, {});
  ASSERT_FALSE(failed.ok());
  EXPECT_THAT(std::string(failed.status().message()),
              HasSubstr(path + ":3: field 'conversations[0].value': missing or not a string"));
  const Trace trace = LoadOrDie(path, TraceFormat::kAuto, BadRecordPolicy::kSkip);
  EXPECT_EQ(trace.records, 5);
  EXPECT_EQ(trace.skipped, 3);
  ASSERT_EQ(trace.skip_messages.size(), 3u);
  EXPECT_THAT(trace.skip_messages[1], HasSubstr(":5: field 'conversations[0].from': unknown "
                                                "speaker 'robot'"));
  EXPECT_THAT(trace.skip_messages[2], HasSubstr(":6: field 'conversations': has no human turn"));
  // A repeated id gets a suffix: ids name conversations on the workers.
  ASSERT_EQ(trace.conversations.size(), 2u);
  EXPECT_EQ(trace.conversations[1].id, "a#2");

  const std::string broken = WriteScratch("broken.json", "[\n {\"id\": \"a\",\n  \"x\": ]\n");
  auto not_json = LoadTrace(broken, TraceFormat::kShareGpt, {});
  ASSERT_FALSE(not_json.ok());
  EXPECT_THAT(std::string(not_json.status().message()), HasSubstr(broken + ":3: not valid JSON"));

  // A number beyond a double is refused, not thrown (found by tests/fuzz).
  const std::string huge = WriteScratch(
      "huge.json",
      R"([{"id": "a", "conversations": [{"from": "human", "value": "hi"}], "n": 1e999}])");
  auto overflow = LoadTrace(huge, TraceFormat::kShareGpt, {});
  ASSERT_FALSE(overflow.ok());
  EXPECT_EQ(overflow.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(overflow.status().message()),
              HasSubstr("not valid JSON: number overflow parsing '1e999'"));
}

// ---- MT-bench -----------------------------------------------------------

TEST(MtBenchTraceTest, QuestionFile) {
  KRUL_REQUIRE_DATA_FILE(path, "conversations/mtbench_question.jsonl");
  const Trace trace = LoadOrDie(path);
  EXPECT_EQ(trace.format, TraceFormat::kMtBench);
  EXPECT_EQ(trace.records, static_cast<int>(RawLines(path).size()));
  ASSERT_EQ(trace.conversations.size(), 80u);
  EXPECT_EQ(trace.turns(), 160);
  const Conversation& first = trace.conversations.front();
  EXPECT_EQ(first.id, "mtbench-81");
  EXPECT_EQ(first.domain, "writing");
  EXPECT_THAT(first.turns[0].text, StartsWith("Compose an engaging travel blog post about a "
                                              "recent trip to Hawaii"));
  EXPECT_EQ(first.turns[1].text,
            "Rewrite your previous response. Start every sentence with the letter A.");
  const Conversation& last = trace.conversations.back();
  EXPECT_EQ(last.id, "mtbench-160");
  EXPECT_EQ(last.domain, "humanities");
  EXPECT_THAT(last.turns[1].text, StartsWith("With the spirit in the first film, craft a "
                                             "succinct and pers"));
  EXPECT_EQ(last.turns[1].line, 80);
}

TEST(MtBenchTraceTest, BadRecordsNameTheLineAndField) {
  const std::string path = WriteScratch("bad_mtbench.jsonl",
                                        "{\"question_id\": 1, \"turns\": [\"a\", \"b\"]}\n"
                                        "\n"
                                        "{\"question_id\": 2, \"turns\": [\"a\", 5]}\n"
                                        "{\"question_id\": 3, \"turns\": []}\n"
                                        "{\"question_id\": 1, \"turns\": [\"x\"]}\n"
                                        "not json\n");
  auto failed = LoadTrace(path, TraceFormat::kMtBench, {});
  ASSERT_FALSE(failed.ok());
  EXPECT_THAT(std::string(failed.status().message()), HasSubstr(path + ":3: field 'turns[1]'"));
  const Trace trace = LoadOrDie(path, TraceFormat::kMtBench, BadRecordPolicy::kSkip);
  EXPECT_EQ(trace.records, 5);
  EXPECT_EQ(trace.skipped, 4);
  ASSERT_EQ(trace.skip_messages.size(), 4u);
  EXPECT_THAT(trace.skip_messages[1], HasSubstr(":4: field 'turns'"));
  EXPECT_THAT(trace.skip_messages[2], HasSubstr(":5: field 'question_id': duplicate"));
  EXPECT_THAT(trace.skip_messages[3], HasSubstr(":6: not valid JSON"));
  EXPECT_EQ(trace.conversations.size(), 1u);
}

// ---- Azure CSV ----------------------------------------------------------

TEST(AzureTraceTest, ConversationTraceWithCrlfAndNoFinalNewline) {
  KRUL_REQUIRE_DATA_FILE(path, "traces/AzureLLMInferenceTrace_conv.csv");
  const Trace trace = LoadOrDie(path);
  EXPECT_EQ(trace.format, TraceFormat::kAzure);
  const std::vector<std::string> lines = RawLines(path);
  ASSERT_EQ(lines.size(), 19367u);  // header + 19,366 rows
  EXPECT_EQ(lines.front().back(), '\r');
  EXPECT_NE(lines.back().back(), '\r');  // no newline after the last row
  EXPECT_EQ(trace.records, 19366);
  EXPECT_EQ(trace.skipped, 0);
  ASSERT_EQ(trace.conversations.size(), 19366u);
  // First row: 2023-11-16 18:15:46.6805900,374,44.
  const Turn& first = trace.conversations.front().turns[0];
  EXPECT_EQ(first.line, 2);
  EXPECT_EQ(*first.arrival_ms, 0);
  EXPECT_EQ(first.input_tokens, 374);
  EXPECT_EQ(first.output_tokens, 44);
  EXPECT_EQ(first.message_tokens, 374);
  ASSERT_EQ(first.blocks.size(), 1u);
  // Last row: 2023-11-16 19:14:08.4025270,197,183 (58 min 21.721937 s later).
  const Turn& last = trace.conversations.back().turns[0];
  EXPECT_EQ(last.line, 19367);
  EXPECT_NEAR(*last.arrival_ms, 3501721.937, 1e-3);
  EXPECT_EQ(last.input_tokens, 197);
  EXPECT_EQ(last.output_tokens, 183);
  // No two requests share a block.
  EXPECT_NE(trace.conversations[0].turns[0].blocks[0].id,
            trace.conversations[1].turns[0].blocks[0].id);
}

TEST(AzureTraceTest, CodeTrace) {
  KRUL_REQUIRE_DATA_FILE(path, "traces/AzureLLMInferenceTrace_code.csv");
  const Trace trace = LoadOrDie(path);
  EXPECT_EQ(trace.records, static_cast<int>(RawLines(path).size()) - 1);
  EXPECT_EQ(trace.records, 8819);
  // 2023-11-16 18:17:03.9799600,4808,10 ... 2023-11-16 19:14:19.9280160,549,173.
  EXPECT_EQ(trace.conversations.front().turns[0].input_tokens, 4808);
  EXPECT_EQ(trace.conversations.front().turns[0].blocks.size(), 10u);  // ceil(4808 / 512)
  EXPECT_EQ(trace.conversations.back().turns[0].output_tokens, 173);
  EXPECT_NEAR(*trace.conversations.back().turns[0].arrival_ms, 3435948.056, 1e-3);
}

TEST(AzureTraceTest, BadRowsNameTheLineAndField) {
  const std::string path = WriteScratch("bad.csv",
                                        "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
                                        "2023-11-16 18:15:46.6805900,374,44\r\n"
                                        "2023-11-16 18:15:47.0000000,abc,44\r\n"
                                        "2023-11-16 25:15:47.0000000,10,44\r\n"
                                        "2023-11-16 18:15:48.0000000,10\r\n"
                                        "2023-11-16 18:15:49.5000000,10,-1");
  auto failed = LoadTrace(path, TraceFormat::kAuto, {});
  ASSERT_FALSE(failed.ok());
  EXPECT_THAT(std::string(failed.status().message()),
              HasSubstr(path + ":3: field 'ContextTokens': 'abc' is not an integer"));
  const Trace trace = LoadOrDie(path, TraceFormat::kAuto, BadRecordPolicy::kSkip);
  EXPECT_EQ(trace.records, 5);
  EXPECT_EQ(trace.skipped, 4);
  ASSERT_EQ(trace.skip_messages.size(), 4u);
  EXPECT_THAT(trace.skip_messages[1], HasSubstr(":4: field 'TIMESTAMP'"));
  EXPECT_THAT(trace.skip_messages[2], HasSubstr(":5: has 2 fields; the header has 3"));
  EXPECT_THAT(trace.skip_messages[3], HasSubstr(":6: field 'GeneratedTokens'"));

  const std::string no_header = WriteScratch("nohead.csv", "a,b,c\n1,2,3\n");
  auto bad_header = LoadTrace(no_header, TraceFormat::kAzure, {});
  ASSERT_FALSE(bad_header.ok());
  EXPECT_THAT(std::string(bad_header.status().message()), HasSubstr(no_header + ":1: the header"));
}

// ---- detection and names ------------------------------------------------

TEST(TraceFormatTest, DetectionAndNames) {
  EXPECT_EQ(*DetectTraceFormat("x", "a.CSV"), TraceFormat::kAzure);
  EXPECT_EQ(*DetectTraceFormat(" [{}]", "a.json"), TraceFormat::kShareGpt);
  EXPECT_EQ(*DetectTraceFormat("{\"hash_ids\": [1]}\n", "a"), TraceFormat::kMooncake);
  EXPECT_EQ(*DetectTraceFormat("{\"turns\": [\"x\"]}\n", "a"), TraceFormat::kMtBench);
  EXPECT_FALSE(DetectTraceFormat("{\"other\": 1}\n", "a").ok());
  for (TraceFormat f : {TraceFormat::kAuto, TraceFormat::kMooncake, TraceFormat::kShareGpt,
                        TraceFormat::kMtBench, TraceFormat::kAzure}) {
    EXPECT_EQ(*ParseTraceFormat(TraceFormatName(f)), f);
  }
  EXPECT_FALSE(ParseTraceFormat("csv").ok());
  EXPECT_FALSE(ParseBadRecordPolicy("ignore").ok());
  auto missing = LoadTrace("/nonexistent/trace.jsonl", TraceFormat::kAuto, {});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace krul::loadtest
