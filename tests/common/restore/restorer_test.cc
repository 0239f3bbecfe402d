// The restore executor against the uncompressed cache and full recompute.
#include "krul/restore/restorer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "krul/compress/compressor.h"
#include "krul/engine/engine_cpu.h"
#include "krul/model/model.h"
#include "krul/restore/kv_source.h"
#include "krul/restore/restore_mode.h"

namespace krul {
namespace {

constexpr int kHistory = 300;  // crosses the engine's 256-token block
constexpr int kNew = 7;

ModelConfig SmallConfig() {
  ModelConfig c;
  c.dim = 64;
  c.hidden_dim = 160;
  c.n_layers = 6;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 96;
  c.seq_len = 512;
  return c;
}

std::vector<int> Tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int> t(n);
  for (int& v : t) v = std::uniform_int_distribution<int>(0, vocab - 1)(rng);
  return t;
}

// Costs where recompute and load are comparable, so plans mix both.
CostCoefficients BalancedCosts(const ModelConfig& c) {
  CostCoefficients k;
  k.compute.fixed_s = 1e-5;
  k.compute.per_token_s = 2e-6;
  k.compute.per_attention_pair_s = 2e-9;
  k.load.latency_s = 2e-5;
  // One layer's fp32 KV per token is 2 * kv_dim * 4 bytes.
  k.load.bytes_per_second = 2.0 * c.kv_dim() * 4 / 2e-6;
  return k;
}

class RestorerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = SmallConfig();
    auto model = MakeSyntheticModel(config_, 42);
    ASSERT_TRUE(model.ok());
    model_ = std::move(*model);
    EngineOptions eo;
    eo.num_threads = 2;
    auto engine = Engine::Create(*model_, eo);
    ASSERT_TRUE(engine.ok());
    engine_ = std::move(*engine);
    history_ = Tokens(kHistory, config_.vocab_size, 1);
    input_ = Tokens(kNew, config_.vocab_size, 2);
    // The uncompressed cache at turn end, and the logits the next turn gets
    // from it.
    auto cache = KvCache::Create(config_, kHistory + kNew);
    ASSERT_TRUE(cache.ok());
    full_ = std::make_unique<KvCache>(std::move(*cache));
    ASSERT_TRUE(engine_->Forward(*full_, history_, 0, {}).ok());
    reference_.resize(config_.vocab_size);
    auto scratch = KvCache::Create(config_, kHistory + kNew);
    ASSERT_TRUE(scratch.ok());
    for (int l = 0; l < config_.n_layers; ++l) {
      std::copy(full_->key(l, 0), full_->key(l, 0) + kHistory * config_.kv_dim(),
                scratch->key(l, 0));
      std::copy(full_->value(l, 0), full_->value(l, 0) + kHistory * config_.kv_dim(),
                scratch->value(l, 0));
    }
    ASSERT_TRUE(engine_->Forward(*scratch, input_, kHistory, reference_).ok());
    // And from a full recompute of history + input in one prefill.
    auto fresh = KvCache::Create(config_, kHistory + kNew);
    ASSERT_TRUE(fresh.ok());
    std::vector<int> all = history_;
    all.insert(all.end(), input_.begin(), input_.end());
    full_recompute_.resize(config_.vocab_size);
    ASSERT_TRUE(engine_->Forward(*fresh, all, 0, full_recompute_).ok());
  }

  // Compresses the turn-end cache as `plan` stores it and restores it.
  struct Outcome {
    std::vector<float> logits;
    RestoreStats stats;
    std::unique_ptr<KvCache> cache;
    std::shared_ptr<CompressedKv> stored;
  };
  Outcome RestoreWith(const RestorePlan& plan, const CompressionPlan& storage,
                      const LinkModel& link = {}, CostModel* cost_model = nullptr) {
    Outcome out;
    auto kv =
        CompressKv(*full_, KvShape::FromConfig(config_), storage, kHistory, plan.recompute_tokens);
    EXPECT_TRUE(kv.ok()) << kv.status();
    if (!kv.ok()) return out;
    out.stored = std::make_shared<CompressedKv>(std::move(*kv));
    auto source = MakeInProcessKvSource(out.stored, link);
    RestorerOptions ro;
    ro.cost_model = cost_model;
    auto restorer = Restorer::Create(*engine_, ro);
    EXPECT_TRUE(restorer.ok());
    auto cache = KvCache::Create(config_, kHistory + kNew);
    EXPECT_TRUE(cache.ok());
    out.cache = std::make_unique<KvCache>(std::move(*cache));
    out.logits.assign(config_.vocab_size, 0);
    auto stats = (*restorer)->Restore(plan, history_, input_, source.get(), *out.cache, out.logits);
    EXPECT_TRUE(stats.ok()) << stats.status();
    if (stats.ok()) out.stats = *std::move(stats);
    return out;
  }

  static double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
    double d = 0;
    for (size_t i = 0; i < a.size(); ++i)
      d = std::max(d, std::abs(static_cast<double>(a[i]) - b[i]));
    return d;
  }

  double MaxKvDiff(const KvCache& a, const KvCache& b, int layer, int begin, int end) const {
    double d = 0;
    for (int t = begin; t < end; ++t) {
      for (int i = 0; i < config_.kv_dim(); ++i) {
        d = std::max(d, std::abs(static_cast<double>(a.key(layer, t)[i]) - b.key(layer, t)[i]));
        d = std::max(d, std::abs(static_cast<double>(a.value(layer, t)[i]) - b.value(layer, t)[i]));
      }
    }
    return d;
  }

  ModelConfig config_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Engine> engine_;
  std::vector<int> history_, input_;
  std::unique_ptr<KvCache> full_;
  std::vector<float> reference_;       // uncompressed cache + prefill of the input
  std::vector<float> full_recompute_;  // one prefill of history + input
};

TEST_F(RestorerTest, EveryModeWithoutCompressionReproducesTheUncompressedCache) {
  const KvShape shape = KvShape::FromConfig(config_);
  const CompressionPlan none = CompressionPlan::Uncompressed(config_.n_layers);
  const CostCoefficients costs = BalancedCosts(config_);
  for (RestoreMode mode : kAllRestoreModes) {
    SCOPED_TRACE(std::string(RestoreModeName(mode)));
    auto plan = PlanForMode(mode, none, shape, kHistory, kNew, costs);
    ASSERT_TRUE(plan.ok()) << plan.status();
    Outcome out = RestoreWith(*plan, StoragePlanForMode(mode, none, config_.n_layers));
    ASSERT_EQ(out.logits.size(), reference_.size());
    EXPECT_LE(MaxAbsDiff(out.logits, reference_), 1e-5) << plan->DebugString();
    EXPECT_LE(MaxAbsDiff(out.logits, full_recompute_), 1e-5) << plan->DebugString();
    for (int l = 0; l < config_.n_layers; ++l) {
      EXPECT_LE(MaxKvDiff(*out.cache, *full_, l, 0, kHistory), 1e-5) << "layer " << l;
    }
    EXPECT_EQ(out.stats.recomputed_token_layers, plan->RecomputedTokenLayers());
    if (RestoreModeSplitPolicy(mode) == SplitPolicy::kUniform ||
        RestoreModeSplitPolicy(mode) == SplitPolicy::kPyramid) {
      // Balanced costs: the split really mixes the two streams.
      EXPECT_GT(plan->RecomputedTokenLayers(), 0) << plan->DebugString();
      EXPECT_LT(plan->RecomputedTokenLayers(), int64_t{kHistory} * config_.n_layers)
          << plan->DebugString();
      EXPECT_FALSE(plan->loads.empty());
    }
  }
}

TEST_F(RestorerTest, HandMadePyramidsRestoreExactly) {
  // Ragged splits, including ones that cross the engine's block size and
  // layers that recompute nothing.
  const CompressionPlan none = CompressionPlan::Uncompressed(config_.n_layers);
  const KvLayout layout = LayoutForPlan(KvShape::FromConfig(config_), none, DType::kF32);
  for (const std::vector<int>& n : std::vector<std::vector<int>>{{300, 300, 300, 300, 300, 300},
                                                                 {290, 257, 256, 100, 1, 0},
                                                                 {300, 0, 0, 0, 0, 0},
                                                                 {17, 17, 16, 3, 3, 2},
                                                                 {0, 0, 0, 0, 0, 0}}) {
    RestorePlan plan;
    plan.n_layers = config_.n_layers;
    plan.history_tokens = kHistory;
    plan.new_tokens = kNew;
    plan.layout = layout;
    plan.recompute_tokens = n;
    plan.loads = MakeLoadSteps(layout, config_.n_layers, kHistory, n);
    Outcome out = RestoreWith(plan, none);
    EXPECT_LE(MaxAbsDiff(out.logits, reference_), 1e-5) << plan.DebugString();
  }
}

// The new-input observer sees the new input's prefill of every layer and
// nothing of the recomputed history, and is cleared afterwards.
TEST_F(RestorerTest, NewInputObserverSeesOnlyTheNewInput) {
  struct Recorder : AttentionObserver {
    void OnAttention(const AttentionWeights& w) override {
      min_query = std::min(min_query, w.query_begin);
      queries[w.layer] += w.num_queries;
      ++blocks;
    }
    int min_query = 1 << 30;
    int blocks = 0;
    std::map<int, int> queries;
  } recorder;
  const CompressionPlan none = CompressionPlan::Uncompressed(config_.n_layers);
  const KvLayout layout = LayoutForPlan(KvShape::FromConfig(config_), none, DType::kF32);
  RestorePlan plan;
  plan.n_layers = config_.n_layers;
  plan.history_tokens = kHistory;
  plan.new_tokens = kNew;
  plan.layout = layout;
  plan.recompute_tokens = {290, 257, 256, 100, 1, 0};  // recomputes history too
  plan.loads = MakeLoadSteps(layout, config_.n_layers, kHistory, plan.recompute_tokens);
  auto kv = CompressKv(*full_, KvShape::FromConfig(config_), none, kHistory, plan.recompute_tokens);
  ASSERT_TRUE(kv.ok());
  auto source = MakeInProcessKvSource(std::make_shared<CompressedKv>(std::move(*kv)), {});
  auto restorer = Restorer::Create(*engine_);
  ASSERT_TRUE(restorer.ok());
  auto cache = KvCache::Create(config_, kHistory + kNew + 1);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(config_.vocab_size);
  auto stats =
      (*restorer)->Restore(plan, history_, input_, source.get(), *cache, logits, &recorder);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_LE(MaxAbsDiff(logits, reference_), 1e-5);
  EXPECT_EQ(recorder.min_query, kHistory);
  ASSERT_EQ(recorder.queries.size(), static_cast<size_t>(config_.n_layers));
  for (const auto& [layer, n] : recorder.queries) EXPECT_EQ(n, kNew) << layer;
  // Cleared: a later step reports nothing.
  const int seen = recorder.blocks;
  const int next = 1;
  ASSERT_TRUE(
      engine_->Forward(*cache, std::span<const int>(&next, 1), kHistory + kNew, logits).ok());
  EXPECT_EQ(recorder.blocks, seen);
}

TEST_F(RestorerTest, SharedPairsRestoreRecomputedPrefixExactlyAndTheRestFromTheStore) {
  // Layers (1, 4) and (2, 3) share; the restored cache must hold the exact
  // recomputed prefix and, beyond it, exactly what the compressor decodes.
  CompressionPlan pairs = CompressionPlan::Uncompressed(config_.n_layers);
  pairs.pairs = {{1, 4, 0}, {2, 3, 0}};
  pairs.target_ratio = pairs.ratio();
  ASSERT_TRUE(ValidatePlan(pairs).ok());
  const KvShape shape = KvShape::FromConfig(config_);
  auto plan = PlanForMode(RestoreMode::kKrul, pairs, shape, kHistory, kNew, BalancedCosts(config_));
  ASSERT_TRUE(plan.ok());
  // Force a ragged pyramid so both pair segments and tails are exercised.
  plan->recompute_tokens = {200, 160, 120, 64, 40, 0};
  plan->loads = MakeLoadSteps(plan->layout, config_.n_layers, kHistory, plan->recompute_tokens);
  Outcome out = RestoreWith(*plan, pairs);
  ASSERT_NE(out.stored, nullptr);
  auto decoded = KvCache::Create(config_, kHistory + kNew);
  ASSERT_TRUE(decoded.ok());
  ASSERT_TRUE(out.stored->DecompressAll(*decoded).ok());
  for (int l = 0; l < config_.n_layers; ++l) {
    const int n = plan->recompute_tokens[l];
    EXPECT_LE(MaxKvDiff(*out.cache, *full_, l, 0, n), 1e-5) << "layer " << l;
    EXPECT_EQ(MaxKvDiff(*out.cache, *decoded, l, n, kHistory), 0) << "layer " << l;
  }
  // Unshared layers (0 and 5) are stored as they are.
  EXPECT_LE(MaxKvDiff(*out.cache, *full_, 0, 0, kHistory), 1e-5);
  EXPECT_LE(MaxKvDiff(*out.cache, *full_, 5, 0, kHistory), 1e-5);
  // The pair's second layers are merged, so they differ somewhere.
  EXPECT_GT(MaxKvDiff(*out.cache, *full_, 4, 200, kHistory), 1e-4);
}

TEST_F(RestorerTest, SlowLinkStillCorrectAndPrefillWaitsForLoads) {
  // The stream takes >= 3 ms + 12 ms: the prefill must wait for the loads.
  const CompressionPlan none = CompressionPlan::Uncompressed(config_.n_layers);
  auto plan = PlanForMode(RestoreMode::kLoad, none, KvShape::FromConfig(config_), kHistory, kNew,
                          BalancedCosts(config_));
  ASSERT_TRUE(plan.ok());
  LinkModel link;
  link.latency_s = 3e-3;
  link.bytes_per_second = plan->stored_bytes / 12e-3;
  Outcome out = RestoreWith(*plan, none, link);
  EXPECT_LE(MaxAbsDiff(out.logits, reference_), 1e-5);
  EXPECT_EQ(out.stats.load_requests, config_.n_layers);
  EXPECT_GE(out.stats.total_seconds, 15e-3 * 0.99);
  EXPECT_GT(out.stats.loaded_bytes, 0u);
  EXPECT_GT(out.stats.efficiency, 0);
  EXPECT_LE(out.stats.efficiency, 1.0);
  // All loads, no recompute: the load stream is busy nearly all the time.
  EXPECT_GT(out.stats.stream_efficiency, 0.5);
  EXPECT_LE(out.stats.stream_efficiency, 1.0);
  EXPECT_GE(out.stats.stream_efficiency, out.stats.efficiency * (1 - 1e-12));
}

TEST_F(RestorerTest, ReplansWhenTheLinkSlowsDownAndOnlyAddsRecompute) {
  const CompressionPlan none = CompressionPlan::Uncompressed(config_.n_layers);
  const CostCoefficients planned = BalancedCosts(config_);
  auto plan =
      PlanForMode(RestoreMode::kKrul, none, KvShape::FromConfig(config_), kHistory, kNew, planned);
  ASSERT_TRUE(plan.ok());
  CostCoefficients now = planned;
  now.load.bytes_per_second /= 50;  // the link got much slower
  auto model = CostModel::Create(now);
  ASSERT_TRUE(model.ok());
  Outcome out = RestoreWith(*plan, none, {}, model->get());
  EXPECT_TRUE(out.stats.replanned);
  for (int l = 0; l < config_.n_layers; ++l) {
    EXPECT_GE(out.stats.plan.recompute_tokens[l], plan->recompute_tokens[l]);
  }
  EXPECT_GT(out.stats.plan.RecomputedTokenLayers(), plan->RecomputedTokenLayers());
  EXPECT_LE(MaxAbsDiff(out.logits, reference_), 1e-5);
}

TEST_F(RestorerTest, EfficiencyIsAgainstTheRestoresOwnCostsAndNeverAboveOne) {
  // Every mode, with a live cost model and an emulated link where loading
  // everything costs about what recomputing it does, so splits matter.
  const KvShape shape = KvShape::FromConfig(config_);
  const CompressionPlan none = CompressionPlan::Uncompressed(config_.n_layers);
  const CostCoefficients costs = BalancedCosts(config_);
  for (RestoreMode mode :
       {RestoreMode::kRecompute, RestoreMode::kLoad, RestoreMode::kCake, RestoreMode::kKrul}) {
    auto plan = PlanForMode(mode, none, shape, kHistory, kNew, costs);
    ASSERT_TRUE(plan.ok());
    auto model = CostModel::Create(costs);
    ASSERT_TRUE(model.ok());
    LinkModel link;
    link.latency_s = 1e-3;
    link.bytes_per_second = costs.load.bytes_per_second;
    Outcome out = RestoreWith(*plan, none, link, model->get());
    const RestoreStats& st = out.stats;
    EXPECT_LE(MaxAbsDiff(out.logits, reference_), 1e-5) << RestoreModeName(mode);
    EXPECT_GT(st.lower_bound_seconds, 0) << RestoreModeName(mode);
    EXPECT_LE(st.lower_bound_seconds, st.total_seconds) << RestoreModeName(mode);
    EXPECT_LE(st.efficiency, 1.0) << RestoreModeName(mode);
    EXPECT_DOUBLE_EQ(st.efficiency, st.lower_bound_seconds / st.total_seconds);
    // The bound is at most either stream's own busy time at the executed
    // split (recompute stream: history + prefill; load stream + one layer).
    EXPECT_LE(st.lower_bound_seconds,
              std::max(st.recompute_seconds + st.prefill_seconds - st.prefill_wait_seconds,
                       st.load_seconds + st.prefill_seconds) *
                  (1 + 1e-9))
        << RestoreModeName(mode);
    if (mode == RestoreMode::kRecompute) {
      // Nothing stored: the only split is recomputing everything, so the
      // bound is the compute stream's own work.
      EXPECT_NEAR(st.lower_bound_seconds,
                  st.recompute_seconds + st.prefill_seconds - st.prefill_wait_seconds,
                  1e-6 + 0.01 * st.lower_bound_seconds);
    }
  }
}

// A source that fails after `ok_fetches` successful fetches.
class FailingSource final : public KvSource {
 public:
  explicit FailingSource(int ok_fetches) : left_(ok_fetches) {}
  absl::StatusOr<size_t> Fetch(std::span<const int>, int, int, BackendKvCache&) override {
    if (left_-- > 0) return size_t{0};
    return absl::UnavailableError("store went away");
  }

 private:
  int left_;
};

TEST_F(RestorerTest, FetchErrorsArePassedThrough) {
  const CompressionPlan none = CompressionPlan::Uncompressed(config_.n_layers);
  auto plan = PlanForMode(RestoreMode::kLoad, none, KvShape::FromConfig(config_), kHistory, kNew,
                          BalancedCosts(config_));
  ASSERT_TRUE(plan.ok());
  auto restorer = Restorer::Create(*engine_);
  ASSERT_TRUE(restorer.ok());
  auto cache = KvCache::Create(config_, kHistory + kNew);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(config_.vocab_size);
  for (int ok : {0, 3}) {
    FailingSource source(ok);
    auto stats = (*restorer)->Restore(*plan, history_, input_, &source, *cache, logits);
    EXPECT_EQ(stats.status().code(), absl::StatusCode::kUnavailable);
  }
}

TEST_F(RestorerTest, RejectsBadArguments) {
  const CompressionPlan none = CompressionPlan::Uncompressed(config_.n_layers);
  auto plan = PlanForMode(RestoreMode::kCake, none, KvShape::FromConfig(config_), kHistory, kNew,
                          BalancedCosts(config_));
  ASSERT_TRUE(plan.ok());
  auto restorer = Restorer::Create(*engine_);
  ASSERT_TRUE(restorer.ok());
  auto cache = KvCache::Create(config_, kHistory + kNew);
  ASSERT_TRUE(cache.ok());
  auto small = KvCache::Create(config_, kHistory);
  ASSERT_TRUE(small.ok());
  std::vector<float> logits(config_.vocab_size), short_logits(3);
  FailingSource source(100);
  auto code = [&](const RestorePlan& p, std::span<const int> h, std::span<const int> in,
                  KvSource* s, KvCache& c, std::span<float> lg) {
    return (*restorer)->Restore(p, h, in, s, c, lg).status().code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(*plan, std::span(history_).subspan(1), input_, &source, *cache, logits), kInvalid);
  EXPECT_EQ(code(*plan, history_, {}, &source, *cache, logits), kInvalid);
  EXPECT_EQ(code(*plan, history_, input_, &source, *small, logits), kInvalid);
  EXPECT_EQ(code(*plan, history_, input_, &source, *cache, short_logits), kInvalid);
  if (!plan->loads.empty()) {
    EXPECT_EQ(code(*plan, history_, input_, nullptr, *cache, logits), kInvalid);
  }
  RestorePlan not_pyramid = *plan;
  not_pyramid.recompute_tokens = {0, 10, 0, 0, 0, 0};
  EXPECT_EQ(code(not_pyramid, history_, input_, &source, *cache, logits), kInvalid);
  // Loads that leave a gap, overlap, or write an earlier layer.
  RestorePlan base = *plan;
  base.recompute_tokens = {100, 100, 50, 50, 0, 0};
  base.loads = MakeLoadSteps(base.layout, config_.n_layers, kHistory, base.recompute_tokens);
  EXPECT_NE(code(base, history_, input_, &source, *cache, logits), kInvalid);
  RestorePlan gap = base;
  gap.loads[2].begin += 1;
  EXPECT_EQ(code(gap, history_, input_, &source, *cache, logits), kInvalid);
  RestorePlan overlap = base;
  overlap.loads[2].begin -= 1;
  EXPECT_EQ(code(overlap, history_, input_, &source, *cache, logits), kInvalid);
  RestorePlan short_end = base;
  short_end.loads[5].end -= 1;
  EXPECT_EQ(code(short_end, history_, input_, &source, *cache, logits), kInvalid);
  RestorePlan backwards = base;
  backwards.loads[3].write_layers = {3, 1};
  EXPECT_EQ(code(backwards, history_, input_, &source, *cache, logits), kInvalid);
  RestorePlan missing = base;
  missing.loads.pop_back();
  EXPECT_EQ(code(missing, history_, input_, &source, *cache, logits), kInvalid);
}

TEST(RestoreModeTest, NamesRoundTrip) {
  for (RestoreMode mode : kAllRestoreModes) {
    auto parsed = ParseRestoreMode(RestoreModeName(mode));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, mode);
  }
  EXPECT_EQ(*ParseRestoreMode("krul_fixed"), RestoreMode::kKrulFixed);
  EXPECT_EQ(ParseRestoreMode("fast").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RestoreModeSplitPolicy(RestoreMode::kCake), SplitPolicy::kUniform);
  EXPECT_EQ(RestoreModeSplitPolicy(RestoreMode::kKrul), SplitPolicy::kPyramid);
}

TEST(RestoreModeTest, StaticMidDepthPairs) {
  auto plan = StaticMidDepthPlan(12, 1.5);  // 4 pairs
  ASSERT_TRUE(plan.ok());
  std::vector<std::pair<int, int>> got;
  for (const LayerPair& p : plan->pairs) got.push_back({p.first, p.second});
  EXPECT_EQ(got, (std::vector<std::pair<int, int>>{{6, 7}, {8, 9}, {10, 11}, {4, 5}}));
  EXPECT_TRUE(ValidatePlan(*plan).ok());
  auto five = StaticMidDepthPlan(5, 2.0);  // at most 2 pairs
  ASSERT_TRUE(five.ok());
  EXPECT_EQ(five->pairs.size(), 2u);
  EXPECT_TRUE(ValidatePlan(*five).ok());
  EXPECT_FALSE(StaticMidDepthPlan(12, 2.5).ok());
}

TEST(RestoreModeTest, LayoutUsesTheCompressorsAccounting) {
  KvShape shape{4, 2, 16};
  CompressionPlan plan = CompressionPlan::Uncompressed(4);
  plan.pairs = {{0, 3, 0}};
  const KvLayout layout = LayoutForPlan(shape, plan, DType::kF16);
  ASSERT_TRUE(layout.Validate(4).ok());
  // N = 100 with n = (50, 40, 30, 10): the pair stores 50 merged + 40 plain
  // tokens, layers 1 and 2 store 60 and 70 plain.
  const std::vector<int> n = {50, 40, 30, 10};
  EXPECT_DOUBLE_EQ(StoredBytes(layout, 4, 100, n),
                   static_cast<double>(EstimateStoredBytes(shape, plan, 100, n, DType::kF16)));
}

}  // namespace
}  // namespace krul
