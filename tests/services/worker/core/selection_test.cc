// The worker's pair selection as served: the estimate a restored turn
// stores includes that turn's new-input prefill on top of the turns before
// (carried in the stored record), and with a pair calibration, conversations
// of different domains get the different pairs the oracle says they need.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "krul/compress/merge_error.h"
#include "krul/compress/pair_calibration.h"
#include "krul/compress/pair_costs.h"
#include "krul/compress/selector.h"
#include "services/worker/worker_test_util.h"
#include "worker/session/session_record.h"

namespace krul::worker {
namespace {

using testing::RunTurn;
using testing::SharedStore;
using testing::TestModelOptions;

// The record of the newest stored version of conversation `id`.
absl::StatusOr<SessionRecord> StoredRecord(WorkerCore& core, const std::string& id) {
  auto manifest = core.store().LookupLatest("default", "c:" + id, absl::Now() + absl::Seconds(5));
  if (!manifest.ok()) return manifest.status();
  return DecodeSessionRecord(manifest->plan());
}

TEST(SelectionTest, EstimateStoredAfterARestoredTurnIncludesItsPrefill) {
  WorkerOptions o = TestModelOptions();
  o.mode = RestoreMode::kKrul;
  o.target_ratio = 1.5;
  auto store = std::make_shared<MemoryConversationStore>();
  auto a = WorkerCore::Create(o, std::make_unique<SharedStore>(store));
  auto b = WorkerCore::Create(o, std::make_unique<SharedStore>(store));
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<ChatMessage> messages = {{Role::kUser, "Tell me a story about a red bird."}};
  auto first = RunTurn(**a, messages, 24, "carry");
  ASSERT_TRUE(first.ok()) << first.status();
  auto r1 = StoredRecord(**a, "carry");
  ASSERT_TRUE(r1.ok()) << r1.status();
  ASSERT_TRUE(r1->estimate.has_value());
  EXPECT_EQ(r1->estimate->prefill_tokens, first->stats.prefilled_tokens);
  EXPECT_GT(r1->estimate->decode_tokens, 0);

  // Turn 2 on the other worker restores turn 1 and prefills only its new
  // input; the stored estimate is turn 1's plus that prefill and decode.
  messages.push_back({Role::kAssistant, first->content});
  messages.push_back({Role::kUser, "What did the bird find in the garden?"});
  auto second = RunTurn(**b, messages, 16, "carry");
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_EQ(second->stats.restore, "hit");
  ASSERT_GT(second->stats.prefilled_tokens, 1);
  auto r2 = StoredRecord(**b, "carry");
  ASSERT_TRUE(r2.ok()) << r2.status();
  ASSERT_TRUE(r2->estimate.has_value());
  const SimilarityEstimate &e1 = *r1->estimate, &e2 = *r2->estimate;
  EXPECT_EQ(e2.prefill_tokens, e1.prefill_tokens + second->stats.prefilled_tokens);
  EXPECT_GT(e2.decode_tokens, e1.decode_tokens);
  // The new input's rows were compared on the prefill path: its part of
  // the distances grew by more than turn 1 had.
  double p1 = 0, p2 = 0;
  for (size_t i = 0; i < e1.prefill_distance.size(); ++i) {
    p1 += e1.prefill_distance[i];
    p2 += e2.prefill_distance[i];
  }
  EXPECT_GT(p2, p1);
  EXPECT_GT(e2.rows_represented, e1.rows_represented);
}

// ---- krulmix: different domains, different pairs -------------------------------

// Texts written for this test in the style of two of krulmix's training
// domains (not taken from any data file): a first turn and what follows.
struct Text {
  const char* first;
  const char* next;
};
const Text kVerse[] = {
    {"KING:\nWhat news, my lord, from yonder northern field?\nLORD:\nThe foe is fled, my "
     "liege, and all is well;\nThe banners fall, and every sword doth yield.\n",
     "KING:\nThen let the bells ring out across the land,\nAnd bid my people come to feast "
     "with me.\n"},
    {"QUEEN:\nO gentle son, why dost thou weep so long?\nPRINCE:\nMy father's ghost did walk "
     "upon the wall,\nAnd spake of murder done by one we love.\n",
     "QUEEN:\nSpeak not of ghosts, for they are dreams of night;\nGo, rest thee now, and "
     "think on it no more.\n"},
    {"DUKE:\nGood morrow, friar; what brings thee here so soon?\nFRIAR:\nA letter, sir, that "
     "came by night from Rome,\nAnd tidings of your daughter and her love.\n",
     "DUKE:\nGive me the letter, that I may read it through,\nAnd know what fortune waits "
     "upon my house.\n"},
};
const Text kCode[] = {
    {"def read_lines(path):\n    with open(path) as f:\n        lines = f.readlines()\n    "
     "return [line.strip() for line in lines if line]\n\n",
     "def count_words(text):\n    words = text.split()\n    return len(words)\n"},
    {"class Counter:\n    def __init__(self):\n        self.items = {}\n\n    def add(self, "
     "key):\n        self.items[key] = self.items.get(key, 0) + 1\n",
     "    def most_common(self, n=1):\n        return sorted(self.items, key=self.items.get)"
     "[-n:]\n"},
    {"import os\nimport sys\n\ndef main(argv):\n    if len(argv) < 2:\n        print('usage: "
     "prog FILE')\n        return 1\n    name = argv[1]\n",
     "    if not os.path.exists(name):\n        return 2\n    return 0\n"},
};

// One text's turn-1 cache, its merge errors and each pair's measured cost
// on what follows.
struct Measured {
  MergeErrors merge;
  std::vector<double> cost;
  std::vector<double> edge_mass;
};

Measured Measure(Engine& engine, const Tokenizer& tokenizer, const Text& text) {
  const ModelConfig& config = engine.config();
  const std::vector<int> first = tokenizer.Encode(text.first, true, false);
  const std::vector<int> next = tokenizer.Encode(text.next, false, false);
  KvCache cache = *KvCache::Create(config, config.seq_len);
  auto estimator = *SimilarityEstimator::Create(config);
  EXPECT_TRUE(engine.SetAttentionObserver(estimator.get()).ok());
  std::vector<float> logits(config.vocab_size);
  EXPECT_TRUE(engine.Forward(cache, first, 0, logits).ok());
  EXPECT_TRUE(engine.SetAttentionObserver(nullptr).ok());
  const SimilarityEstimate e = estimator->Finish();
  const int n = static_cast<int>(first.size());
  Measured m;
  m.merge = *MeasureMergeErrors(cache, KvShape::FromConfig(config), 0, n);
  auto probe = PlanProbe::Create(engine, cache, n, next);
  EXPECT_TRUE(probe.ok()) << probe.status();
  m.cost = *probe->MeasureEveryPair();
  for (int l = 0; l < config.n_layers; ++l) m.edge_mass.push_back(e.EdgeMass(l));
  return m;
}

std::vector<std::pair<int, int>> Pairs(const CompressionPlan& plan) {
  std::vector<std::pair<int, int>> out;
  for (const LayerPair& p : plan.pairs) out.emplace_back(p.first, p.second);
  std::sort(out.begin(), out.end());
  return out;
}

TEST(SelectionTest, KrulmixDomainsGetDifferentPairsWhenTheOracleSaysSo) {
  KRUL_REQUIRE_DATA_FILE(model_path, "models/krulmix.bin");
  KRUL_REQUIRE_DATA_FILE(tokenizer_path, "models/tok512.bin");
  auto model = LoadModel(model_path);
  ASSERT_TRUE(model.ok());
  auto tokenizer = Tokenizer::ForModel(**model, tokenizer_path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto engine = Engine::Create(**model, EngineOptions{.num_threads = 1});
  ASSERT_TRUE(engine.ok());
  const int L = (*model)->config().n_layers;

  // References: the first two texts of each domain, measured.
  PairCalibration calibration(L);
  for (int i = 0; i < 2; ++i) {
    for (const auto& [domain, text] :
         {std::pair{"verse", kVerse[i]}, std::pair{"code", kCode[i]}}) {
      const Measured m = Measure(**engine, *tokenizer, text);
      PairReference r;
      r.id = std::string(domain) + std::to_string(i);
      r.domain = domain;
      r.merge_key = m.merge.key;
      r.merge_value = m.merge.value;
      r.cost = m.cost;
      r.edge_mass = m.edge_mass;
      ASSERT_TRUE(calibration.Add(std::move(r)).ok());
    }
  }
  // The oracle for the held-out third text of each: its own measured costs.
  SelectorOptions so;
  so.target_ratio = 1.5;
  so.sensitivity_threshold = 1.0;
  const Measured verse = Measure(**engine, *tokenizer, kVerse[2]);
  const Measured code = Measure(**engine, *tokenizer, kCode[2]);
  const auto oracle_verse = Pairs(*SelectPlanByScore(verse.cost, {}, so));
  const auto oracle_code = Pairs(*SelectPlanByScore(code.cost, {}, so));
  if (oracle_verse == oracle_code) {
    GTEST_SKIP() << "the oracle picks the same pairs for both domains: nothing to tell apart";
  }

  // The worker, calibrated with the references, serves both held-out texts.
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("krul-selection-test-" + std::to_string(::getpid()) + ".txt"))
                               .string();
  ASSERT_TRUE(WritePairCalibration(calibration, path).ok());
  WorkerOptions o = TestModelOptions();
  o.synthetic = false;
  o.model_path = model_path;
  o.tokenizer_path = tokenizer_path;
  o.mode = RestoreMode::kKrul;
  o.target_ratio = 1.5;
  o.krul_calibration = path;
  o.krul_neighbours = 2;
  auto core = WorkerCore::Create(o, std::make_unique<MemoryConversationStore>());
  std::filesystem::remove(path);
  ASSERT_TRUE(core.ok()) << core.status();
  auto served = [&](const Text& text, const std::string& id) {
    auto turn = RunTurn(**core, {{Role::kUser, text.first}}, 16, id);
    EXPECT_TRUE(turn.ok()) << turn.status();
    auto record = StoredRecord(**core, id);
    EXPECT_TRUE(record.ok()) << record.status();
    return record.ok() ? Pairs(record->plan) : std::vector<std::pair<int, int>>{};
  };
  const auto worker_verse = served(kVerse[2], "verse");
  const auto worker_code = served(kCode[2], "code");
  EXPECT_EQ(worker_verse.size(), 4u);
  EXPECT_EQ(worker_code.size(), 4u);
  EXPECT_NE(worker_verse, worker_code);
  // Each served set costs its own conversation less (by the oracle's
  // measured single-pair costs) than the set served to the other domain.
  auto cost_of = [&](const std::vector<std::pair<int, int>>& set, const Measured& m) {
    double c = 0;
    for (auto [x, y] : set) c += m.cost[x * L + y];
    return c;
  };
  EXPECT_LT(cost_of(worker_verse, verse), cost_of(worker_code, verse));
  EXPECT_LT(cost_of(worker_code, code), cost_of(worker_verse, code));
  RecordProperty("verse_own_set_cost", std::to_string(cost_of(worker_verse, verse)));
  RecordProperty("verse_code_set_cost", std::to_string(cost_of(worker_code, verse)));
  RecordProperty("code_own_set_cost", std::to_string(cost_of(worker_code, code)));
  RecordProperty("code_verse_set_cost", std::to_string(cost_of(worker_verse, code)));
}

}  // namespace
}  // namespace krul::worker
