// A restored turn and the same turn recomputed from the conversation's text
// give the same greedy tokens (issue 17, "deterministic answers").
//
// Every conversation runs turn by turn on a worker whose store works: from
// the second turn on, each turn restores the previous turn's stored version
// (a "hit"). The same request (the whole conversation so far, the answers as
// text) then goes to a second worker whose store is down, which falls back
// to tokenizing the messages and prefilling all of them. The two answers
// must be the same token ids.
//
// Conversations: the shared data's story conversations, MT-bench questions
// and krulmix's held-out conversations (user turns only; the worker writes
// the answers), on krul12L; a synthetic model with built-in user turns when
// the data is absent. KRUL_DETERMINISM_TURNS bounds the compared turns per
// mode (default 24; 0 = every turn of every conversation, what
// tests/stress/determinism.sh runs). Each case prints its count.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "krul/kvformat/kv_block.h"
#include "nlohmann/json.hpp"
#include "services/worker/worker_test_util.h"
#include "worker/session/kv_blocks.h"
#include "worker/session/session_record.h"

namespace krul::worker {
namespace {

using testing::RunTurn;
using testing::SharedStore;
using testing::TestModelOptions;

constexpr int kMaxTokens = 32;
// User messages are cut (at a space) to this many bytes so that two or three
// turns fit krul12L's 256-token context.
constexpr size_t kMaxUserBytes = 160;

std::string Cut(const std::string& text) {
  if (text.size() <= kMaxUserBytes) return text;
  size_t end = text.rfind(' ', kMaxUserBytes);
  if (end == std::string::npos || end == 0) end = kMaxUserBytes;
  return text.substr(0, end);
}

// User turns of every conversation in the shared data, in a fixed order
// (stories, krulmix, MT-bench); built-in turns without the data.
std::vector<std::vector<std::string>> LoadUserTurns() {
  std::vector<std::vector<std::string>> out;
  for (const char* file : {"conversations/krul_story_conversations.json",
                           "conversations/krul_mix_conversations.json"}) {
    auto path = ::krul::testing::DataFile(file);
    if (!path) continue;
    const nlohmann::json doc = nlohmann::json::parse(::krul::testing::ReadFileOrDie(*path));
    for (const auto& conversation : doc) {
      std::vector<std::string> turns;
      for (const auto& m : conversation["conversations"]) {
        if (m["from"] == "human") turns.push_back(Cut(m["value"].get<std::string>()));
      }
      if (turns.size() >= 2) out.push_back(std::move(turns));
    }
  }
  if (auto path = ::krul::testing::DataFile("conversations/mtbench_question.jsonl")) {
    std::istringstream lines(::krul::testing::ReadFileOrDie(*path));
    for (std::string line; std::getline(lines, line);) {
      if (line.empty()) continue;
      const nlohmann::json q = nlohmann::json::parse(line);
      std::vector<std::string> turns;
      for (const auto& t : q["turns"]) turns.push_back(Cut(t.get<std::string>()));
      if (turns.size() >= 2) out.push_back(std::move(turns));
    }
  }
  if (out.empty()) {
    out = {{"Tell me a story about a little dog named Max.", "What did Max do with the ball?",
            "How did the story end?"},
           {"Once upon a time there was a girl.", "What was her name?", "Where did she go?"},
           {"Write about the sun and the moon.", "Who was happier?", "Why?"},
           {"A cat sat on a mat.", "Then what happened?", "And after that?"}};
  }
  return out;
}

int TurnLimit() {
  const char* env = std::getenv("KRUL_DETERMINISM_TURNS");
  return env != nullptr ? std::atoi(env) : 24;
}

// A worker over a store of its own that is down: every turn is prefilled
// from the messages' text (fallback "store_unavailable").
std::unique_ptr<WorkerCore> TextOnlyWorker(const WorkerOptions& o) {
  auto store = std::make_shared<MemoryConversationStore>();
  store->InjectFailure(absl::UnavailableError("down for the test"));
  auto core = WorkerCore::Create(o, std::make_unique<SharedStore>(store));
  EXPECT_TRUE(core.ok()) << core.status();
  return core.ok() ? *std::move(core) : nullptr;
}

struct Agreement {
  int compared = 0;
  int equal = 0;
  int not_hit = 0;
  // Answers whose sampled ids are not the canonical tokens of their text
  // (of every answer generated, compared or not).
  int answers = 0;
  int noncanonical = 0;
};

// Whether `ids` are the tokens the template gives the answer's text.
bool Canonical(const WorkerCore& core, const std::vector<int>& ids, const std::string& content) {
  std::vector<int> tokens = core.chat_template().MessageTokens({Role::kAssistant, content});
  const size_t prompt = core.chat_template().GenerationPrompt().size();
  return tokens.size() >= prompt && std::vector<int>(tokens.begin() + prompt, tokens.end()) == ids;
}

Agreement Measure(const WorkerOptions& o, int limit) {
  Agreement a;
  auto store = std::make_shared<MemoryConversationStore>();
  auto restoring = WorkerCore::Create(o, std::make_unique<SharedStore>(store));
  EXPECT_TRUE(restoring.ok()) << restoring.status();
  std::unique_ptr<WorkerCore> text_only = TextOnlyWorker(o);
  if (!restoring.ok() || text_only == nullptr) return a;
  int index = 0;
  for (const std::vector<std::string>& turns : LoadUserTurns()) {
    std::vector<ChatMessage> messages;
    const std::string id = "determinism-" + std::to_string(index++);
    for (size_t t = 0; t < turns.size(); ++t) {
      if (limit > 0 && a.compared >= limit) return a;
      messages.push_back({Role::kUser, turns[t]});
      auto restored = RunTurn(**restoring, messages, kMaxTokens, id);
      if (!restored.ok() && restored.status().code() == absl::StatusCode::kInvalidArgument) {
        break;  // the conversation no longer fits the context
      }
      EXPECT_TRUE(restored.ok()) << restored.status();
      if (!restored.ok()) return a;
      ++a.answers;
      if (!Canonical(**restoring, restored->ids, restored->content)) ++a.noncanonical;
      if (t > 0) {
        auto recomputed = RunTurn(*text_only, messages, kMaxTokens, id);
        EXPECT_TRUE(recomputed.ok()) << recomputed.status();
        if (!recomputed.ok()) return a;
        EXPECT_EQ(recomputed->stats.restore, "fallback");
        ++a.compared;
        if (restored->stats.restore != "hit") ++a.not_hit;
        if (restored->ids == recomputed->ids) {
          ++a.equal;
        } else {
          ADD_FAILURE() << "conversation " << id << " turn " << t << " (" << messages.size()
                        << " messages): the restored answer '" << restored->content
                        << "' differs from the recomputed '" << recomputed->content << "'";
        }
      }
      messages.push_back({Role::kAssistant, restored->content});
    }
  }
  return a;
}

void ExpectAgreement(RestoreMode mode, double target_ratio, ChatTemplateKind chat_template,
                     const char* label) {
  WorkerOptions o = TestModelOptions();
  o.mode = mode;
  o.target_ratio = target_ratio;
  o.chat_template = chat_template;
  const Agreement a = Measure(o, TurnLimit());
  std::printf(
      "determinism %s: %d/%d restored turns equal to the recomputed ones (%d not hits); "
      "%d/%d answers sampled other ids than their text's canonical tokens\n",
      label, a.equal, a.compared, a.not_hit, a.noncanonical, a.answers);
  EXPECT_GT(a.compared, 0);
  EXPECT_EQ(a.not_hit, 0);
  EXPECT_EQ(a.equal, a.compared);
}

TEST(DeterminismTest, LoadedHistoryGivesTheRecomputedAnswer) {
  ExpectAgreement(RestoreMode::kLoad, 1.0, ChatTemplateKind::kPlain, "load");
}

// krul without layer sharing: part of the history recomputed, the rest
// loaded (sharing changes the KV itself; that loss is measured by the
// quality benchmarks, not here).
TEST(DeterminismTest, KrulRestoreGivesTheRecomputedAnswer) {
  ExpectAgreement(RestoreMode::kKrul, 1.0, ChatTemplateKind::kPlain, "krul");
}

TEST(DeterminismTest, RolesTemplateGivesTheRecomputedAnswer) {
  ExpectAgreement(RestoreMode::kLoad, 1.0, ChatTemplateKind::kRoles, "load, roles template");
}

// Every mode stores and restores the canonical history: with nothing
// shared (ratio 1) each is exact, so each gives the recomputed answer.
TEST(DeterminismTest, EveryModeGivesTheRecomputedAnswerWithoutSharing) {
  const int limit = TurnLimit() > 0 ? std::max(2, TurnLimit() / 4) : 0;
  for (RestoreMode mode : kAllRestoreModes) {
    SCOPED_TRACE(std::string(RestoreModeName(mode)));
    WorkerOptions o = TestModelOptions();
    o.mode = mode;
    o.target_ratio = 1.0;
    const Agreement a = Measure(o, limit);
    std::printf("determinism %s: %d/%d\n", std::string(RestoreModeName(mode)).c_str(), a.equal,
                a.compared);
    EXPECT_GT(a.compared, 0);
    EXPECT_EQ(a.not_hit, 0);
    EXPECT_EQ(a.equal, a.compared);
  }
}

// An answer sampled (temperature 1.5) as ids that are not its text's
// canonical tokens: the version stored holds the canonical ids and their
// KV (prefilled again at persist time), so the next turn restores all of
// it and still gives the recomputed answer.
TEST(DeterminismTest, AnAnswerSampledAsOtherIdsIsStoredCanonically) {
  WorkerOptions o = TestModelOptions();
  o.mode = RestoreMode::kLoad;
  auto store = std::make_shared<MemoryConversationStore>();
  auto restoring = WorkerCore::Create(o, std::make_unique<SharedStore>(store));
  ASSERT_TRUE(restoring.ok()) << restoring.status();
  std::unique_ptr<WorkerCore> text_only = TextOnlyWorker(o);
  ASSERT_NE(text_only, nullptr);
  int found = 0;
  for (uint64_t seed = 1; seed <= 40 && found < 3; ++seed) {
    const std::string id = "sampled-" + std::to_string(seed);
    ChatRequest first;
    first.messages = {{Role::kUser, "Tell me a story about a little dog named Max."}};
    first.max_tokens = kMaxTokens;
    first.temperature = 1.5;
    first.seed = seed;
    first.conversation_id = id;
    auto session = (*restoring)->StartChat(first, absl::Now());
    ASSERT_TRUE(session.ok()) << session.status();
    while (!(*session)->done()) ASSERT_TRUE((*session)->Next().ok());
    const std::vector<int> ids = (*session)->completion_tokens();
    const std::string content = (*session)->content();
    if (Canonical(**restoring, ids, content)) continue;  // not the case under test
    ++found;
    (*session)->Commit();
    session->reset();
    ASSERT_TRUE((*restoring)->persister().Drain(absl::Seconds(30)));
    std::vector<ChatMessage> messages = first.messages;
    messages.push_back({Role::kAssistant, content});
    messages.push_back({Role::kUser, "What did Max do next?"});
    auto restored = RunTurn(**restoring, messages, kMaxTokens, id);
    auto recomputed = RunTurn(*text_only, messages, kMaxTokens, id);
    ASSERT_TRUE(restored.ok() && recomputed.ok());
    EXPECT_EQ(restored->stats.restore, "hit");
    EXPECT_EQ(restored->ids, recomputed->ids) << "seed " << seed;
    // The canonical history was restored (its KV rewritten at persist time)
    // as far as the first turn's cache held it (its prompt + max_tokens; a
    // canonical split can be longer than the sampled one), the rest and the
    // new message prefilled.
    const ChatTemplate& tpl = (*restoring)->chat_template();
    const int history = static_cast<int>(tpl.HistoryTokens(messages, 2).size());
    const int capacity = static_cast<int>(tpl.PromptTokens(first.messages).size()) + kMaxTokens;
    EXPECT_EQ(restored->stats.restored_tokens, std::min(history, capacity));
    EXPECT_EQ(restored->stats.restored_tokens + restored->stats.prefilled_tokens,
              restored->stats.prompt_tokens);
  }
  std::printf("determinism: %d sampled answers with other ids than their text's canonical ones\n",
              found);
  EXPECT_GT(found, 0) << "no seed sampled a non-canonical answer";
}

// The KV stored for a turn (load mode: every layer, fp32, as computed) is
// bit for bit what a prefill of the record's tokens computes, answer
// included: not the decode steps' KV, whose one-token products are summed
// in another order.
TEST(DeterminismTest, StoredKvIsBitForBitAPrefillOfTheCanonicalTokens) {
  WorkerOptions o = TestModelOptions();
  o.mode = RestoreMode::kLoad;
  auto store = std::make_shared<MemoryConversationStore>();
  auto core = WorkerCore::Create(o, std::make_unique<SharedStore>(store));
  ASSERT_TRUE(core.ok()) << core.status();
  const std::vector<ChatMessage> messages = {
      {Role::kUser, "Tell me a story about a little dog named Max."}};
  auto turn = RunTurn(**core, messages, kMaxTokens, "bits");
  ASSERT_TRUE(turn.ok()) << turn.status();
  ASSERT_FALSE(turn->ids.empty());
  auto manifest = store->LookupLatest(o.tenant, "c:bits", absl::InfiniteFuture());
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  auto record = DecodeSessionRecord(manifest->plan());
  ASSERT_TRUE(record.ok()) << record.status();
  ASSERT_GT(record->kv_tokens,
            static_cast<int>((*core)->chat_template().PromptTokens(messages).size()));

  const Model& model = (*core)->model();
  const int kv_dim = model.config().kv_dim();
  auto engine = Engine::Create(model, EngineOptions{.num_threads = 1});
  ASSERT_TRUE(engine.ok());
  auto cache = KvCache::Create(model.config(), record->kv_tokens);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE(
      (*engine)
          ->Forward(*cache, std::span<const int>(record->tokens.data(), record->kv_tokens), 0, {})
          .ok());

  std::vector<uint32_t> all(manifest->blocks_size());
  for (uint32_t i = 0; i < all.size(); ++i) all[i] = i;
  int rows = 0, differing = 0;
  auto sink = [&](uint32_t, std::string encoded) -> absl::Status {
    auto block = DecodeBlock(encoded);
    if (!block.ok()) return block.status();
    auto segment = SegmentFromBlock(*block);
    if (!segment.ok()) return segment.status();
    EXPECT_EQ(segment->kind, SegmentKind::kPlain);
    EXPECT_EQ(segment->dtype, DType::kF32);
    const int n = segment->num_tokens();
    const float* k = reinterpret_cast<const float*>(segment->payload.data());
    const float* v = k + static_cast<size_t>(n) * kv_dim;
    for (int t = 0; t < n; ++t) {
      const int pos = segment->begin + t;
      ++rows;
      differing += std::memcmp(k + static_cast<size_t>(t) * kv_dim, cache->key(segment->layer, pos),
                               kv_dim * sizeof(float)) != 0 ||
                   std::memcmp(v + static_cast<size_t>(t) * kv_dim,
                               cache->value(segment->layer, pos), kv_dim * sizeof(float)) != 0;
    }
    return absl::OkStatus();
  };
  ASSERT_TRUE(store->ReadBlocks(*manifest, all, sink, absl::InfiniteFuture()).ok());
  EXPECT_EQ(rows, record->kv_tokens * model.config().n_layers);
  EXPECT_EQ(differing, 0) << "of " << rows << " stored (layer, token) rows";
}

}  // namespace
}  // namespace krul::worker
