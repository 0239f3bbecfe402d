// Helpers shared by the worker's in-process tests: a model to serve (the
// real krul12L when the shared data is there, else a synthetic one), a
// store shared by several WorkerCores, running one turn, and an
// independent reference run of the engine that keeps its KV cache across
// turns (what an uninterrupted conversation computes).
#ifndef KRUL_TESTS_SERVICES_WORKER_WORKER_TEST_UTIL_H_
#define KRUL_TESTS_SERVICES_WORKER_WORKER_TEST_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include "krul/engine/engine_cpu.h"
#include "krul/engine/sampler.h"
#include "krul/model/tokenizer.h"
#include "test_support/test_data.h"
#include "worker/api/openai_api.h"
#include "worker/core/options.h"
#include "worker/core/worker_core.h"
#include "worker/session/conversation_store.h"
#include "worker/session/session.h"

namespace krul::worker::testing {

// Worker options for the test model: krul12L + tok512 from the shared data
// when present, else a small synthetic model. `real` tells which.
inline WorkerOptions TestModelOptions(bool* real = nullptr) {
  WorkerOptions o;
  auto model = ::krul::testing::DataFile("models/krul12L.bin");
  auto tokenizer = ::krul::testing::DataFile("models/tok512.bin");
  if (model && tokenizer) {
    o.model_path = *model;
    o.tokenizer_path = *tokenizer;
    if (real) *real = true;
  } else {
    o.synthetic = true;
    o.synthetic_shape = *ParseModelShape("64,172,6,8,4,512,256");
    if (real) *real = false;
  }
  o.threads = 1;
  o.probe_compute = false;  // fixed costs: the same split on every run
  o.probe_load = false;
  o.freeze_costs = true;
  o.fixed_pairs = "";
  o.allow_mode_override = true;
  return o;
}

// Lets several WorkerCores (each owning its store) share one store, like
// several worker processes sharing the kvstore.
class SharedStore final : public ForwardingConversationStore {
 public:
  explicit SharedStore(std::shared_ptr<MemoryConversationStore> store)
      : ForwardingConversationStore(std::move(store)) {}
};

struct TurnResult {
  std::vector<int> ids;
  std::string content;
  std::string finish_reason;
  CompletionStats stats;
};

// Runs one greedy turn to the end, commits it and waits for the persist.
inline absl::StatusOr<TurnResult> RunTurn(WorkerCore& core, const std::vector<ChatMessage>& msgs,
                                          int max_tokens, const std::string& conversation_id = "",
                                          std::optional<RestoreMode> mode = std::nullopt) {
  ChatRequest r;
  r.messages = msgs;
  r.max_tokens = max_tokens;
  r.temperature = 0;
  r.conversation_id = conversation_id;
  if (mode.has_value()) r.mode = std::string(RestoreModeName(*mode));
  auto session = core.StartChat(r, absl::Now());
  if (!session.ok()) return session.status();
  while (!(*session)->done()) {
    auto piece = (*session)->Next();
    if (!piece.ok()) return piece.status();
  }
  TurnResult out;
  out.ids = (*session)->completion_tokens();
  out.content = (*session)->content();
  out.finish_reason = (*session)->finish_reason();
  out.stats = (*session)->stats();
  (*session)->Commit();
  session->reset();
  if (!core.persister().Drain(absl::Seconds(30))) {
    return absl::DeadlineExceededError("persist did not finish");
  }
  return out;
}

// The uninterrupted reference: one KV cache for the whole conversation.
// Each user message is BOS-less Encode(content + "\n") (the plain
// template, written out here independently of the worker's code). The
// history continued from holds the answer as a recompute of its text
// computes it, as the worker stores it: the cache is rewound to the
// answer's start and the canonical tokens of the answer's text (the plain
// template's: Encode without a dummy space) prefilled with the next
// message, in one batch. The text is the one a client receives and sends
// back: the decoded bytes as valid UTF-8, a byte token that forms no
// character (frequent in the synthetic model's answers) as U+FFFD.
class ReferenceConversation {
 public:
  ReferenceConversation(const Model& model, const Tokenizer& tokenizer)
      : tokenizer_(tokenizer),
        engine_(*Engine::Create(model, EngineOptions{.num_threads = 1})),
        cache_(*KvCache::Create(model.config(), model.config().seq_len)),
        logits_(model.config().vocab_size) {
    pending_.push_back(tokenizer.bos_id());
  }

  // Greedy answer of up to `max_tokens` tokens to `user`.
  std::vector<int> Turn(const std::string& user, int max_tokens) {
    if (answer_start_ >= 0) {
      std::string text;
      int prev = before_answer_;
      for (int t : answer_) {
        text += tokenizer_.Decode(prev, t);
        prev = t;
      }
      pos_ = answer_start_;
      pending_ = tokenizer_.Encode(SanitizeUtf8(text), false, false, /*dummy_prefix=*/false);
    }
    std::vector<int> piece = tokenizer_.Encode(user + "\n", false, false);
    pending_.insert(pending_.end(), piece.begin(), piece.end());
    EXPECT_TRUE(engine_->Forward(cache_, pending_, pos_, logits_).ok());
    pos_ += static_cast<int>(pending_.size());
    before_answer_ = pending_.back();
    answer_start_ = pos_;
    pending_.clear();
    std::vector<int> out;
    while (true) {
      const int next = ArgMax(logits_);
      if (next == tokenizer_.bos_id() || next == tokenizer_.eos_id()) break;
      out.push_back(next);
      if (static_cast<int>(out.size()) == max_tokens) break;
      EXPECT_TRUE(engine_->Forward(cache_, std::span<const int>(&next, 1), pos_, logits_).ok());
      ++pos_;
    }
    answer_ = out;
    return out;
  }

 private:
  const Tokenizer& tokenizer_;
  std::unique_ptr<Engine> engine_;
  KvCache cache_;
  std::vector<float> logits_;
  std::vector<int> pending_;
  int pos_ = 0;
  // The last answer, where it starts and the token before it.
  std::vector<int> answer_;
  int answer_start_ = -1;
  int before_answer_ = -1;
};

}  // namespace krul::worker::testing

#endif  // KRUL_TESTS_SERVICES_WORKER_WORKER_TEST_UTIL_H_
