// The turn-end decision every mode stores with (the worker's persister and
// the quality benchmarks call the same function).
#include "krul/restore/turn_end.h"

#include <algorithm>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "krul/compress/merge_error.h"
#include "krul/engine/kv_cache.h"

namespace krul {
namespace {

constexpr int kL = 6;
const KvShape kShape{kL, 2, 8};

// A cache whose layers follow `order`: layers close in `order` hold
// similar rows (a conversation "kind").
KvCache KindCache(const std::vector<int>& order, uint32_t seed, int n) {
  KvCache cache = *KvCache::Create(kL, kShape.kv_dim(), 64);
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> drift(2 * kShape.kv_dim());
  for (int t = 0; t < n; ++t) {
    for (float& x : drift) x = g(rng);
    std::vector<float> row(2 * kShape.kv_dim());
    for (float& x : row) x = g(rng);
    for (int i = 0; i < kL; ++i) {
      const int l = order[i];
      for (int j = 0; j < 2 * kShape.kv_dim(); ++j) row[j] += 0.6f * drift[j] * (i % 2 ? 1 : -1);
      for (int j = 0; j < kShape.kv_dim(); ++j) {
        cache.key(l, t)[j] = row[j];
        cache.value(l, t)[j] = row[kShape.kv_dim() + j];
      }
    }
  }
  return cache;
}

std::vector<double> CostsFavouring(const std::vector<std::pair<int, int>>& cheap) {
  std::vector<double> c(kL * kL, 0.05);
  for (int l = 0; l < kL; ++l) c[l * kL + l] = 0;
  for (auto [a, b] : cheap) c[a * kL + b] = c[b * kL + a] = 0.001;
  return c;
}

PairReference ReferenceOf(const KvCache& cache, const std::string& id,
                          const std::vector<double>& cost) {
  const MergeErrors m = *MeasureMergeErrors(cache, kShape, 0, 40);
  PairReference r;
  r.id = id;
  r.domain = id;
  r.merge_key = m.key;
  r.merge_value = m.value;
  r.cost = cost;
  r.edge_mass.assign(kL, 0.3);
  return r;
}

std::vector<std::pair<int, int>> Pairs(const CompressionPlan& plan) {
  std::vector<std::pair<int, int>> out;
  for (const LayerPair& p : plan.pairs) out.emplace_back(p.first, p.second);
  std::sort(out.begin(), out.end());
  return out;
}

TEST(TurnEndTest, KrulFollowsTheNearestReferencesKind) {
  const KvCache a1 = KindCache({0, 1, 2, 3, 4, 5}, 1, 40),
                a2 = KindCache({0, 1, 2, 3, 4, 5}, 2, 40);
  const KvCache b1 = KindCache({5, 2, 4, 0, 3, 1}, 3, 40),
                b2 = KindCache({5, 2, 4, 0, 3, 1}, 4, 40);
  PairCalibration calibration(kL);
  ASSERT_TRUE(calibration.Add(ReferenceOf(a1, "a1", CostsFavouring({{0, 1}, {2, 3}}))).ok());
  ASSERT_TRUE(calibration.Add(ReferenceOf(b1, "b1", CostsFavouring({{0, 5}, {1, 4}}))).ok());
  TurnEndOptions options;
  options.shape = kShape;
  options.selector.target_ratio = 1.5;  // two pairs of six layers
  options.selector.sensitivity_threshold = 1.0;
  options.calibration = &calibration;
  options.neighbours = 1;
  TurnEndInput input;
  input.cache = &a2;
  input.num_tokens = 40;
  auto choice = ChooseTurnEndPairs(options, input);
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->source, "calibration");
  EXPECT_EQ(choice->neighbour_domains, std::vector<std::string>{"a1"});
  EXPECT_EQ(Pairs(choice->pairs), (std::vector<std::pair<int, int>>{{0, 1}, {2, 3}}));
  EXPECT_NEAR(choice->predicted_loss, 0.002, 1e-12);
  input.cache = &b2;
  choice = ChooseTurnEndPairs(options, input);
  ASSERT_TRUE(choice.ok());
  EXPECT_EQ(choice->neighbour_domains, std::vector<std::string>{"b1"});
  EXPECT_EQ(Pairs(choice->pairs), (std::vector<std::pair<int, int>>{{0, 5}, {1, 4}}));
  // A budget of 0.0015 fits one cheap pair only: ratio 6 / 5.
  options.selector.target_ratio = 2.0;
  options.selector.quality_budget = 0.0015;
  choice = ChooseTurnEndPairs(options, input);
  ASSERT_TRUE(choice.ok());
  EXPECT_EQ(choice->pairs.pairs.size(), 1u);
  // Leaving b1 out, only a1 is left to predict from.
  options.selector.quality_budget = 0;
  options.exclude_reference = "b1";
  choice = ChooseTurnEndPairs(options, input);
  ASSERT_TRUE(choice.ok());
  EXPECT_EQ(choice->neighbour_domains, std::vector<std::string>{"a1"});
}

// After a restore, the history's shared pairs are merged, so the profile is
// measured on the tokens computed since (exact_from), as the references'
// were on whole uncompressed caches; too few of them: the whole history.
TEST(TurnEndTest, KrulProfilesTheExactTokensAfterARestore) {
  const KvCache a1 = KindCache({0, 1, 2, 3, 4, 5}, 1, 40);
  const KvCache b1 = KindCache({5, 2, 4, 0, 3, 1}, 3, 40);
  PairCalibration calibration(kL);
  ASSERT_TRUE(calibration.Add(ReferenceOf(a1, "a1", CostsFavouring({{0, 1}, {2, 3}}))).ok());
  ASSERT_TRUE(calibration.Add(ReferenceOf(b1, "b1", CostsFavouring({{0, 5}, {1, 4}}))).ok());
  // Tokens [0, 40) look like kind b (standing in for a distorted restored
  // history), tokens [40, 64) are kind a.
  const KvCache b2 = KindCache({5, 2, 4, 0, 3, 1}, 4, 40);
  const KvCache a2 = KindCache({0, 1, 2, 3, 4, 5}, 2, 64);
  KvCache mixed = *KvCache::Create(kL, kShape.kv_dim(), 64);
  for (int l = 0; l < kL; ++l) {
    for (int t = 0; t < 64; ++t) {
      const KvCache& from = t < 40 ? b2 : a2;
      std::copy_n(from.key(l, t), kShape.kv_dim(), mixed.key(l, t));
      std::copy_n(from.value(l, t), kShape.kv_dim(), mixed.value(l, t));
    }
  }
  TurnEndOptions options;
  options.shape = kShape;
  options.selector.target_ratio = 1.5;
  options.selector.sensitivity_threshold = 1.0;
  options.calibration = &calibration;
  options.neighbours = 1;
  TurnEndInput input;
  input.cache = &mixed;
  input.num_tokens = 64;
  auto whole = ChooseTurnEndPairs(options, input);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->neighbour_domains, std::vector<std::string>{"b1"});
  input.exact_from = 40;  // 24 exact tokens
  auto exact = ChooseTurnEndPairs(options, input);
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ(exact->neighbour_domains, std::vector<std::string>{"a1"});
  EXPECT_EQ(Pairs(exact->pairs), (std::vector<std::pair<int, int>>{{0, 1}, {2, 3}}));
  input.exact_from = 64 - kMinProfileTokens + 1;  // too few: the whole history
  auto few = ChooseTurnEndPairs(options, input);
  ASSERT_TRUE(few.ok()) << few.status();
  EXPECT_EQ(few->neighbour_domains, std::vector<std::string>{"b1"});
}

// fixed_unless_confident: krul's own pairs only when its nearest references
// agree they are cheaper than the fixed pairs.
TEST(TurnEndTest, FixedUnlessTheReferencesAgree) {
  const KvCache a1 = KindCache({0, 1, 2, 3, 4, 5}, 1, 40),
                a2 = KindCache({0, 1, 2, 3, 4, 5}, 2, 40),
                a3 = KindCache({0, 1, 2, 3, 4, 5}, 5, 40);
  const KvCache b1 = KindCache({5, 2, 4, 0, 3, 1}, 3, 40);
  TurnEndOptions options;
  options.shape = kShape;
  options.selector.target_ratio = 1.5;
  options.selector.sensitivity_threshold = 1.0;
  options.neighbours = 2;
  options.fixed_pairs = CompressionPlan::Uncompressed(kL);
  options.fixed_pairs.pairs = {{0, 5, 0}, {1, 4, 0}};
  options.fixed_unless_confident = true;
  TurnEndInput input;
  input.cache = &a3;
  input.num_tokens = 40;
  // Both kind-a references find {0-1, 2-3} cheaper than the fixed pairs.
  PairCalibration agree(kL);
  ASSERT_TRUE(agree.Add(ReferenceOf(a1, "a1", CostsFavouring({{0, 1}, {2, 3}}))).ok());
  ASSERT_TRUE(agree.Add(ReferenceOf(a2, "a2", CostsFavouring({{0, 1}, {2, 3}}))).ok());
  ASSERT_TRUE(agree.Add(ReferenceOf(b1, "b1", CostsFavouring({{0, 5}, {1, 4}}))).ok());
  options.calibration = &agree;
  auto choice = ChooseTurnEndPairs(options, input);
  ASSERT_TRUE(choice.ok()) << choice.status();
  EXPECT_EQ(choice->source, "calibration");
  EXPECT_EQ(Pairs(choice->pairs), (std::vector<std::pair<int, int>>{{0, 1}, {2, 3}}));
  // One says much cheaper, the other says the fixed pairs are cheaper: the
  // mean still favours {0-1, 2-3}, but not by more than its standard error.
  std::vector<double> split = CostsFavouring({{0, 5}, {1, 4}});
  split[0 * kL + 1] = split[1 * kL + 0] = 0.002;
  split[2 * kL + 3] = split[3 * kL + 2] = 0.002;
  PairCalibration disagree(kL);
  ASSERT_TRUE(disagree.Add(ReferenceOf(a1, "a1", CostsFavouring({{0, 1}, {2, 3}}))).ok());
  ASSERT_TRUE(disagree.Add(ReferenceOf(a2, "a2", split)).ok());
  ASSERT_TRUE(disagree.Add(ReferenceOf(b1, "b1", CostsFavouring({{0, 5}, {1, 4}}))).ok());
  options.calibration = &disagree;
  choice = ChooseTurnEndPairs(options, input);
  ASSERT_TRUE(choice.ok()) << choice.status();
  std::vector<std::string> neighbours = choice->neighbours;
  std::sort(neighbours.begin(), neighbours.end());
  EXPECT_EQ(neighbours, (std::vector<std::string>{"a1", "a2"}));
  EXPECT_EQ(choice->source, "calibration-fixed");
  EXPECT_EQ(Pairs(choice->pairs), (std::vector<std::pair<int, int>>{{0, 5}, {1, 4}}));
  // Off: krul's own pairs whenever predicted cheaper.
  options.fixed_unless_confident = false;
  choice = ChooseTurnEndPairs(options, input);
  ASSERT_TRUE(choice.ok());
  EXPECT_EQ(choice->source, "calibration");
}

TEST(TurnEndTest, BaselinesAndValidation) {
  const KvCache cache = KindCache({0, 1, 2, 3, 4, 5}, 1, 40);
  TurnEndOptions options;
  options.shape = kShape;
  options.selector.target_ratio = 1.5;
  options.fixed_pairs = CompressionPlan::Uncompressed(kL);
  options.fixed_pairs.pairs = {{1, 4, 0}, {2, 5, 0}};
  TurnEndInput input;
  input.cache = &cache;
  input.num_tokens = 40;
  input.mode = RestoreMode::kKrulFixed;
  EXPECT_EQ(Pairs(ChooseTurnEndPairs(options, input)->pairs),
            (std::vector<std::pair<int, int>>{{1, 4}, {2, 5}}));
  input.mode = RestoreMode::kMiniCache;
  EXPECT_EQ(ChooseTurnEndPairs(options, input)->source, "static");
  input.mode = RestoreMode::kLoad;
  EXPECT_TRUE(ChooseTurnEndPairs(options, input)->pairs.pairs.empty());
  // krul with nothing observed and no calibration shares nothing.
  input.mode = RestoreMode::kKrul;
  EXPECT_EQ(ChooseTurnEndPairs(options, input)->source, "uncompressed");
  // A budget without predicted costs is refused.
  options.selector.quality_budget = 0.01;
  EXPECT_EQ(ChooseTurnEndPairs(options, input).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TurnEndTest, LoadAllStoresEveryLayerWhole) {
  const KvCache cache = KindCache({0, 1, 2, 3, 4, 5}, 1, 40);
  TurnEndOptions options;
  options.shape = kShape;
  options.selector.target_ratio = 1.5;
  options.load_all = true;
  TurnEndInput input;
  input.cache = &cache;
  input.num_tokens = 40;
  input.mode = RestoreMode::kMiniCache;
  CostCoefficients costs;
  costs.compute.per_token_s = 1e-6;
  costs.load.bytes_per_second = 1e9;
  auto end = PlanTurnEnd(options, input, costs);
  ASSERT_TRUE(end.ok()) << end.status();
  EXPECT_EQ(end->restore.recompute_tokens, std::vector<int>(kL, 0));
  EXPECT_EQ(end->storage.pairs.size(), 2u);
  EXPECT_EQ(
      end->kv.stored_bytes(),
      EstimateStoredBytes(kShape, end->storage, 40, end->restore.recompute_tokens, DType::kF32));
}

}  // namespace
}  // namespace krul
