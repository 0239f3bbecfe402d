// In-process tests of the worker's turn flow (WorkerCore + Session +
// Persister + Restorer) over a shared in-memory store: equality with an
// uninterrupted run, real loads, every restore mode, and every fallback.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "services/worker/worker_test_util.h"

namespace krul::worker {
namespace {

using testing::ReferenceConversation;
using testing::RunTurn;
using testing::SharedStore;
using testing::TestModelOptions;

const std::vector<std::string> kUserTurns = {
    "Tell me a story about a little dog named Max.",
    "What did Max do with the ball?",
    "How did the story end?",
};
constexpr int kMaxTokens = 24;

struct Cluster {
  std::shared_ptr<MemoryConversationStore> store = std::make_shared<MemoryConversationStore>();
  std::unique_ptr<WorkerCore> a, b;
};

Cluster MakeCluster(WorkerOptions o) {
  Cluster c;
  auto a = WorkerCore::Create(o, std::make_unique<SharedStore>(c.store));
  auto b = WorkerCore::Create(o, std::make_unique<SharedStore>(c.store));
  EXPECT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(b.ok()) << b.status();
  if (a.ok()) c.a = *std::move(a);
  if (b.ok()) c.b = *std::move(b);
  return c;
}

// A three-turn conversation through two workers (A, B, A) with greedy
// decoding and no layer sharing gives exactly the tokens of one
// uninterrupted run, whatever share of the history each turn recomputes.
void ExpectSameAsUninterrupted(const std::string& conversation_id) {
  WorkerOptions o = TestModelOptions();
  o.mode = RestoreMode::kKrul;
  o.target_ratio = 1.0;
  // Costs under which the best split recomputes the first layers and loads
  // the others (checked below), so both halves of a restore are exercised.
  o.load_latency_us = 1000;
  Cluster c = MakeCluster(o);
  ASSERT_TRUE(c.a && c.b);
  ReferenceConversation reference(c.a->model(), c.a->tokenizer());

  std::vector<ChatMessage> messages;
  double recomputed = 0, loaded = 0;
  WorkerCore* workers[] = {c.a.get(), c.b.get(), c.a.get()};
  for (size_t turn = 0; turn < kUserTurns.size(); ++turn) {
    messages.push_back({Role::kUser, kUserTurns[turn]});
    auto result = RunTurn(*workers[turn], messages, kMaxTokens, conversation_id);
    ASSERT_TRUE(result.ok()) << result.status();
    const std::vector<int> expected = reference.Turn(kUserTurns[turn], kMaxTokens);
    EXPECT_EQ(result->ids, expected) << "turn " << turn;
    if (turn > 0) {
      EXPECT_EQ(result->stats.restore, "hit") << "turn " << turn;
      EXPECT_GT(result->stats.restored_tokens, 0);
      recomputed += result->stats.recomputed_tokens;
      loaded += result->stats.loaded_tokens;
    }
    messages.push_back({Role::kAssistant, result->content});
  }
  EXPECT_GT(recomputed, 0);
  EXPECT_GT(loaded, 0);
}

TEST(SessionTest, ThreeTurnsThroughTwoWorkersMatchUninterruptedRunByDigest) {
  ExpectSameAsUninterrupted("");
}

TEST(SessionTest, ThreeTurnsThroughTwoWorkersMatchUninterruptedRunById) {
  ExpectSameAsUninterrupted("conv-42");
}

TEST(SessionTest, WithSharingTheNextTurnLoadsPartAndRecomputesPart) {
  WorkerOptions o = TestModelOptions();
  o.mode = RestoreMode::kKrul;
  o.target_ratio = 1.5;
  // A load request costs more than recomputing a layer's short history, so
  // the best split recomputes the first layers while the rest streams in.
  o.load_latency_us = 1000;
  Cluster c = MakeCluster(o);
  ASSERT_TRUE(c.a && c.b);
  std::vector<ChatMessage> messages = {{Role::kUser, kUserTurns[0]}};
  auto first = RunTurn(*c.a, messages, 48);
  ASSERT_TRUE(first.ok()) << first.status();
  messages.push_back({Role::kAssistant, first->content});
  messages.push_back({Role::kUser, kUserTurns[1]});
  auto second = RunTurn(*c.b, messages, 16);
  ASSERT_TRUE(second.ok()) << second.status();
  const CompletionStats& s = second->stats;
  EXPECT_EQ(s.restore, "hit");
  EXPECT_GT(s.loaded_bytes, 0u);
  EXPECT_GT(s.recomputed_tokens, 0.0);
  EXPECT_LT(s.recomputed_tokens, s.restored_tokens);
  EXPECT_NEAR(s.recomputed_tokens + s.loaded_tokens, s.restored_tokens, 1e-9);
  EXPECT_FALSE(second->ids.empty());
}

TEST(SessionTest, EveryModeRestoresTheNextTurn) {
  WorkerOptions o = TestModelOptions();
  o.target_ratio = 1.5;
  Cluster c = MakeCluster(o);
  ASSERT_TRUE(c.a && c.b);
  for (RestoreMode mode : kAllRestoreModes) {
    SCOPED_TRACE(std::string(RestoreModeName(mode)));
    const std::string id = "mode-" + std::string(RestoreModeName(mode));
    std::vector<ChatMessage> messages = {{Role::kUser, kUserTurns[0]}};
    auto first = RunTurn(*c.a, messages, 32, id, mode);
    ASSERT_TRUE(first.ok()) << first.status();
    messages.push_back({Role::kAssistant, first->content});
    messages.push_back({Role::kUser, kUserTurns[1]});
    auto second = RunTurn(*c.b, messages, 8, id, mode);
    ASSERT_TRUE(second.ok()) << second.status();
    const CompletionStats& s = second->stats;
    EXPECT_EQ(s.restore, "hit");
    EXPECT_EQ(s.mode, RestoreModeName(mode));
    EXPECT_GT(s.restored_tokens, 0);
    if (mode == RestoreMode::kRecompute) {
      EXPECT_EQ(s.loaded_bytes, 0u);
      EXPECT_DOUBLE_EQ(s.recomputed_tokens, s.restored_tokens);
    }
    if (mode == RestoreMode::kLoad || mode == RestoreMode::kMiniCache) {
      EXPECT_GT(s.loaded_bytes, 0u);
      EXPECT_DOUBLE_EQ(s.recomputed_tokens, 0.0);
    }
  }
}

// A failure of the store in the middle of a conversation: the turn is still
// answered, by recomputing, and the reason is reported.
struct FaultCase {
  const char* name;
  std::function<void(MemoryConversationStore&)> inject;
  const char* reason;
};

TEST(SessionTest, FaultsFallBackToRecompute) {
  const std::vector<FaultCase> cases = {
      {"down", [](MemoryConversationStore& s) { s.InjectFailure(absl::UnavailableError("down")); },
       "store_unavailable"},
      {"slow",
       [](MemoryConversationStore& s) { s.InjectFailure(absl::DeadlineExceededError("slow")); },
       "deadline"},
      {"corrupt", [](MemoryConversationStore& s) { s.CorruptBlocks(); }, "checksum"},
      {"missing", [](MemoryConversationStore& s) { s.DropBlocks(); }, "missing_blocks"},
  };
  for (const FaultCase& fault : cases) {
    SCOPED_TRACE(fault.name);
    WorkerOptions o = TestModelOptions();
    o.mode = RestoreMode::kLoad;  // everything is loaded: every block matters
    Cluster c = MakeCluster(o);
    ASSERT_TRUE(c.a && c.b);
    std::vector<ChatMessage> messages = {{Role::kUser, kUserTurns[0]}};
    auto first = RunTurn(*c.a, messages, 16);
    ASSERT_TRUE(first.ok()) << first.status();
    messages.push_back({Role::kAssistant, first->content});
    messages.push_back({Role::kUser, kUserTurns[1]});
    fault.inject(*c.store);
    auto second = RunTurn(*c.b, messages, 16);
    ASSERT_TRUE(second.ok()) << second.status();
    EXPECT_EQ(second->stats.restore, "fallback");
    EXPECT_EQ(second->stats.fallback_reason, fault.reason);
    EXPECT_EQ(second->stats.restored_tokens, 0);
    EXPECT_FALSE(second->ids.empty());
    const std::string metrics = c.b->metrics().Serialize();
    EXPECT_NE(
        metrics.find(std::string("krul_worker_fallbacks_total{reason=\"") + fault.reason + "\"} 1"),
        std::string::npos)
        << metrics;
  }
}

// A store whose leases fail as a store that lost the version does.
class NoLeaseStore final : public ForwardingConversationStore {
 public:
  explicit NoLeaseStore(std::shared_ptr<MemoryConversationStore> store)
      : ForwardingConversationStore(std::move(store)) {}
  absl::StatusOr<StorePin> Pin(const v1::ConversationKey&, absl::Duration, absl::Time) override {
    return absl::NotFoundError("the version is gone");
  }
};

TEST(SessionTest, ARestoreLeasesTheVersionItReadsAndReleasesIt) {
  WorkerOptions o = TestModelOptions();
  o.mode = RestoreMode::kLoad;
  Cluster c = MakeCluster(o);
  ASSERT_TRUE(c.a && c.b);
  std::vector<ChatMessage> messages = {{Role::kUser, kUserTurns[0]}};
  auto first = RunTurn(*c.a, messages, 16);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(c.store->pins_granted(), 0);  // nothing was restored
  messages.push_back({Role::kAssistant, first->content});
  messages.push_back({Role::kUser, kUserTurns[1]});
  auto second = RunTurn(*c.b, messages, 16);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->stats.restore, "hit");
  EXPECT_EQ(c.store->pins_granted(), 1);
  EXPECT_EQ(c.store->active_pins(), 0);  // released with the session

  // Without leases (--pin_restores=false) the restore pins nothing.
  o.pin_restores = false;
  Cluster unpinned = MakeCluster(o);
  ASSERT_TRUE(unpinned.a && unpinned.b);
  messages.resize(1);
  first = RunTurn(*unpinned.a, messages, 16);
  ASSERT_TRUE(first.ok()) << first.status();
  messages.push_back({Role::kAssistant, first->content});
  messages.push_back({Role::kUser, kUserTurns[1]});
  second = RunTurn(*unpinned.b, messages, 16);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->stats.restore, "hit");
  EXPECT_EQ(unpinned.store->pins_granted(), 0);
}

TEST(SessionTest, AVersionThatCannotBeLeasedIsRecomputed) {
  WorkerOptions o = TestModelOptions();
  o.mode = RestoreMode::kLoad;
  auto store = std::make_shared<MemoryConversationStore>();
  auto a = WorkerCore::Create(o, std::make_unique<SharedStore>(store));
  auto b = WorkerCore::Create(o, std::make_unique<NoLeaseStore>(store));
  ASSERT_TRUE(a.ok() && b.ok());
  ReferenceConversation reference((*a)->model(), (*a)->tokenizer());
  std::vector<ChatMessage> messages = {{Role::kUser, kUserTurns[0]}};
  auto first = RunTurn(**a, messages, 16);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->ids, reference.Turn(kUserTurns[0], 16));
  messages.push_back({Role::kAssistant, first->content});
  messages.push_back({Role::kUser, kUserTurns[1]});
  auto second = RunTurn(**b, messages, 16);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->stats.restore, "fallback");
  EXPECT_EQ(second->stats.fallback_reason, "missing_blocks");
  // Recomputed, so the uninterrupted run's answer.
  EXPECT_EQ(second->ids, reference.Turn(kUserTurns[1], 16));
}

TEST(SessionTest, CorruptedBlocksGiveTheSameAnswerAsAnIntactStore) {
  // A checksum failure is detected before any stored byte reaches the
  // cache: the fallback recomputes the same history the intact store held.
  WorkerOptions o = TestModelOptions();
  o.mode = RestoreMode::kLoad;
  std::vector<std::vector<int>> answers;
  for (bool corrupt : {false, true}) {
    Cluster c = MakeCluster(o);
    ASSERT_TRUE(c.a && c.b);
    std::vector<ChatMessage> messages = {{Role::kUser, kUserTurns[0]}};
    auto first = RunTurn(*c.a, messages, 16);
    ASSERT_TRUE(first.ok());
    messages.push_back({Role::kAssistant, first->content});
    messages.push_back({Role::kUser, kUserTurns[1]});
    if (corrupt) c.store->CorruptBlocks();
    auto second = RunTurn(*c.b, messages, 16);
    ASSERT_TRUE(second.ok());
    EXPECT_EQ(second->stats.restore, corrupt ? "fallback" : "hit");
    answers.push_back(second->ids);
  }
  EXPECT_EQ(answers[0], answers[1]);
}

TEST(SessionTest, ReusedConversationIdWithOtherHistoryIsNotRestored) {
  WorkerOptions o = TestModelOptions();
  Cluster c = MakeCluster(o);
  ASSERT_TRUE(c.a && c.b);
  std::vector<ChatMessage> messages = {{Role::kUser, kUserTurns[0]}};
  ASSERT_TRUE(RunTurn(*c.a, messages, 8, "same-id").ok());
  // Another history under the same id: the stored KV belongs to the first.
  std::vector<ChatMessage> other = {{Role::kUser, "A different story."},
                                    {Role::kAssistant, "Something else."},
                                    {Role::kUser, kUserTurns[1]}};
  auto result = RunTurn(*c.b, other, 8, "same-id");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stats.restore, "fallback");
  EXPECT_EQ(result->stats.fallback_reason, "mismatch");
  EXPECT_EQ(result->stats.restored_tokens, 0);
}

TEST(SessionTest, EditedAssistantMessageIsNotRestoredByDigest) {
  WorkerOptions o = TestModelOptions();
  Cluster c = MakeCluster(o);
  ASSERT_TRUE(c.a && c.b);
  std::vector<ChatMessage> messages = {{Role::kUser, kUserTurns[0]}};
  auto first = RunTurn(*c.a, messages, 8);
  ASSERT_TRUE(first.ok());
  messages.push_back({Role::kAssistant, first->content + " (edited)"});
  messages.push_back({Role::kUser, kUserTurns[1]});
  auto second = RunTurn(*c.b, messages, 8);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->stats.restore, "miss");
  EXPECT_EQ(second->stats.restored_tokens, 0);
}

TEST(SessionTest, ContextOverflowIsInvalidArgument) {
  WorkerOptions o = TestModelOptions();
  Cluster c = MakeCluster(o);
  ASSERT_TRUE(c.a);
  const int seq_len = c.a->model().config().seq_len;
  std::string long_text;
  for (int i = 0; i < seq_len; ++i) long_text += "dog ";
  auto result = RunTurn(*c.a, {{Role::kUser, long_text}}, 8);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(result.status().message()).find("context"), std::string::npos);
  // Fits alone, but not with the answer asked for.
  auto too_many = RunTurn(*c.a, {{Role::kUser, "Hi"}}, seq_len);
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SessionTest, UnknownModelIsNotFound) {
  WorkerOptions o = TestModelOptions();
  Cluster c = MakeCluster(o);
  ASSERT_TRUE(c.a);
  ChatRequest r;
  r.model = "gpt-4o";
  r.messages = {{Role::kUser, "Hi"}};
  auto session = c.a->StartChat(r, absl::Now());
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace krul::worker
