#include "krul/compress/selector.h"

#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"
#include "test_support/test_data.h"

namespace krul {
namespace {

using ::testing::ElementsAre;

// An estimate with one represented row per unit of distance, so
// MeanDistance == the given D, and edge masses given per layer.
SimilarityEstimate MakeEstimate(const std::vector<std::vector<double>>& d,
                                const std::vector<double>& edge_mass) {
  const int n = static_cast<int>(d.size());
  SimilarityEstimate e = SimilarityEstimate::Empty(n);
  for (int a = 0; a < n; ++a) {
    for (int b = 0; b < n; ++b) e.distance[a * n + b] = d[a][b];
    e.first_mass_sum[a] = edge_mass[a] / 2;
    e.last_mass_sum[a] = edge_mass[a] / 2;
    e.mass_weight[a] = 1;
  }
  e.rows_represented = 1;
  return e;
}

SimilarityEstimate RandomEstimate(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(0.0, 1.0);
  std::vector<std::vector<double>> d(n, std::vector<double>(n, 0.0));
  for (int a = 0; a < n; ++a) {
    for (int b = a + 1; b < n; ++b) d[a][b] = d[b][a] = dist(rng);
  }
  std::vector<double> mass(n);
  for (double& m : mass) m = dist(rng);
  return MakeEstimate(d, mass);
}

TEST(SelectorTest, PairsForRatioHandValues) {
  EXPECT_EQ(PairsForRatio(12, 1.0), 0);
  EXPECT_EQ(PairsForRatio(12, 1.5), 4);   // 12 / 8
  EXPECT_EQ(PairsForRatio(12, 1.33), 3);  // 12 / 9 = 1.333 >= 1.33
  EXPECT_EQ(PairsForRatio(12, 1.34), 4);
  EXPECT_EQ(PairsForRatio(12, 2.0), 6);
  EXPECT_EQ(PairsForRatio(5, 2.0), 2);   // at most floor(5 / 2)
  EXPECT_EQ(PairsForRatio(5, 1.25), 1);  // 5 / 4
  EXPECT_EQ(PairsForRatio(1, 2.0), 0);
}

TEST(SelectorTest, HandBuiltExample) {
  // 6 layers. Smallest distances: (1,4)=0.1, (1,2)=0.2 (1 used), (2,3)=0.3,
  // (0,5)=0.05 but layer 5 is input-sensitive, (0,3)=0.35 (3 used), (0,2)
  // = 0.4 (2 used), then everything else is 1.
  std::vector<std::vector<double>> d(6, std::vector<double>(6, 1.0));
  for (int i = 0; i < 6; ++i) d[i][i] = 0;
  auto set = [&](int a, int b, double v) { d[a][b] = d[b][a] = v; };
  set(1, 4, 0.1);
  set(1, 2, 0.2);
  set(2, 3, 0.3);
  set(0, 5, 0.05);
  set(0, 3, 0.35);
  set(0, 2, 0.4);
  const std::vector<double> mass = {0.3, 0.2, 0.1, 0.4, 0.5, 0.95};
  SelectorOptions o;
  o.target_ratio = 2.0;  // as many pairs as possible
  o.sensitivity_threshold = 0.9;
  auto plan = SelectPlan(MakeEstimate(d, mass), o);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->pairs.size(), 2u);  // 5 robust layers: at most 2 pairs
  EXPECT_EQ(plan->pairs[0], (LayerPair{1, 4, 0.1}));
  EXPECT_EQ(plan->pairs[1], (LayerPair{2, 3, 0.3}));
  EXPECT_THAT(plan->input_sensitive, ElementsAre(0, 0, 0, 0, 0, 1));
  EXPECT_NEAR(plan->ratio(), 1.5, 1e-12);
  EXPECT_EQ(plan->PartnerOf(4), 1);
  EXPECT_EQ(plan->PartnerOf(0), -1);

  // Target 1.2 of 6 layers: 6 / 5 = 1.2 -> one pair.
  o.target_ratio = 1.2;
  plan = SelectPlan(MakeEstimate(d, mass), o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->pairs.size(), 1u);

  // Quality budget 0.25 stops before (2,3).
  o.target_ratio = 2.0;
  o.quality_budget = 0.25;
  plan = SelectPlan(MakeEstimate(d, mass), o);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->pairs.size(), 1u);
  EXPECT_EQ(plan->pairs[0].first, 1);

  // never_share takes layer 1 out. Robust {0,2,3,4}: (2,3)=0.3 first; (0,3)
  // and (0,2) then reuse a layer, so the next is (0,4)=1 (ties by index).
  o.quality_budget = 0;
  o.never_share = {1};
  plan = SelectPlan(MakeEstimate(d, mass), o);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->pairs.size(), 2u);
  EXPECT_EQ(plan->pairs[0], (LayerPair{2, 3, 0.3}));
  EXPECT_EQ(plan->pairs[1], (LayerPair{0, 4, 1.0}));
}

// Invariants over many random estimates, checked against the definition of
// the greedy rule rather than against a second implementation of it.
TEST(SelectorTest, InvariantsOnRandomEstimates) {
  for (uint32_t seed = 1; seed <= 200; ++seed) {
    const int n = 2 + static_cast<int>(seed % 31);
    const SimilarityEstimate e = RandomEstimate(n, seed);
    SelectorOptions o;
    o.target_ratio = 1.0 + (seed % 11) / 10.0;
    o.sensitivity_threshold = 0.3 + (seed % 7) / 10.0;
    auto plan = SelectPlan(e, o);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_TRUE(ValidatePlan(*plan).ok());
    std::vector<int> robust;
    for (int l = 0; l < n; ++l) {
      const bool sensitive = e.EdgeMass(l) > o.sensitivity_threshold;
      EXPECT_EQ(plan->input_sensitive[l], sensitive ? 1 : 0);
      if (!sensitive) robust.push_back(l);
    }
    std::set<int> used;
    for (const LayerPair& p : plan->pairs) {
      EXPECT_LT(p.first, p.second);
      EXPECT_TRUE(used.insert(p.first).second) << "layer twice";
      EXPECT_TRUE(used.insert(p.second).second) << "layer twice";
      EXPECT_FALSE(plan->input_sensitive[p.first]);
      EXPECT_FALSE(plan->input_sensitive[p.second]);
    }
    // Ratio reached, or no robust pair left; never more pairs than needed.
    const int wanted = PairsForRatio(n, o.target_ratio);
    EXPECT_EQ(static_cast<int>(plan->pairs.size()),
              std::min<int>(wanted, static_cast<int>(robust.size()) / 2));
    const bool reachable = static_cast<double>(n) / (n - n / 2) >= o.target_ratio;
    if (static_cast<int>(plan->pairs.size()) == wanted && reachable) {
      EXPECT_GE(plan->ratio() + 1e-9, o.target_ratio);
    }
    // Greedy: when pair k was taken, no pair of still-free robust layers was
    // closer.
    std::set<int> taken;
    for (const LayerPair& p : plan->pairs) {
      for (int a : robust) {
        for (int b : robust) {
          if (a >= b || taken.count(a) || taken.count(b)) continue;
          EXPECT_GE(e.MeanDistance(a, b), p.distance) << "seed " << seed;
        }
      }
      taken.insert(p.first);
      taken.insert(p.second);
    }
    // Deterministic.
    auto again = SelectPlan(e, o);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *plan);
  }
}

TEST(SelectorTest, TiesAreBrokenByLayerIndex) {
  std::vector<std::vector<double>> d(4, std::vector<double>(4, 0.5));
  for (int i = 0; i < 4; ++i) d[i][i] = 0;
  SelectorOptions o;
  o.target_ratio = 2.0;
  auto plan = SelectPlan(MakeEstimate(d, {0, 0, 0, 0}), o);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->pairs.size(), 2u);
  EXPECT_EQ(plan->pairs[0], (LayerPair{0, 1, 0.5}));
  EXPECT_EQ(plan->pairs[1], (LayerPair{2, 3, 0.5}));
}

TEST(SelectorTest, RejectsBadInput) {
  const SimilarityEstimate e = RandomEstimate(6, 3);
  SelectorOptions o;
  o.target_ratio = 2.5;
  EXPECT_EQ(SelectPlan(e, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.sensitivity_threshold = -0.1;
  EXPECT_EQ(SelectPlan(e, o).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.never_share = {6};
  EXPECT_EQ(SelectPlan(e, o).status().code(), absl::StatusCode::kInvalidArgument);
  SimilarityEstimate nan = e;
  nan.distance[1] = std::nan("");
  EXPECT_EQ(SelectPlan(nan, {}).status().code(), absl::StatusCode::kInvalidArgument);
  SimilarityEstimate short_d = e;
  short_d.distance.pop_back();
  EXPECT_EQ(SelectPlan(short_d, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectPlan(SimilarityEstimate::Empty(6), {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// ---------------------------------------------------------------------------
// Plan format

// FNV-1a 64, from its definition (offset basis and prime of the spec), to
// re-seal hand-edited plans.
uint64_t Fnv(const std::string& s) {
  uint64_t h = 14695981039346656037ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

std::string Reseal(std::string bytes) {
  bytes.resize(bytes.size() - 8);
  uint64_t h = Fnv(bytes);
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((h >> (8 * i)) & 0xff));
  return bytes;
}

CompressionPlan SamplePlan() {
  CompressionPlan p = CompressionPlan::Uncompressed(11);
  p.pairs = {{3, 7, 0.125}, {4, 5, 0.25}, {1, 9, 0.5}};
  p.input_sensitive[0] = p.input_sensitive[10] = p.input_sensitive[8] = 1;
  p.target_ratio = 1.4;
  p.sensitivity_threshold = 0.85;
  p.edge_fraction = 0.1;
  p.quality_budget = 0.75;
  return p;
}

// Own: layers (0,1) close (0.1), (0,2) far (0.9); population the other way
// round. Hand-computed weighted means decide which pair wins.
TEST(ShrinkTowardTest, WeighsThePopulationAsTheGivenRows) {
  SimilarityEstimate own =
      MakeEstimate({{0, 0.1, 0.9}, {0.1, 0, 0.5}, {0.9, 0.5, 0}}, {0.2, 0.2, 0.2});
  own.rows_represented = 100;
  for (double& v : own.distance) v *= 100;  // MeanDistance stays as written
  for (int l = 0; l < 3; ++l) {
    own.first_mass_sum[l] *= 100;
    own.last_mass_sum[l] *= 100;
    own.mass_weight[l] *= 100;
  }
  SimilarityEstimate population =
      MakeEstimate({{0, 0.9, 0.1}, {0.9, 0, 0.5}, {0.1, 0.5, 0}}, {0.6, 0.6, 0.6});
  population.rows_represented = 5000;
  for (double& v : population.distance) v *= 5000;
  for (int l = 0; l < 3; ++l) {
    population.first_mass_sum[l] *= 5000;
    population.last_mass_sum[l] *= 5000;
    population.mass_weight[l] *= 5000;
  }

  // 0 rows: own unchanged.
  auto same = ShrinkToward(own, population, 0);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->distance, own.distance);
  EXPECT_DOUBLE_EQ(same->rows_represented, 100);

  // 300 rows: (0,1) = (100 * 0.1 + 300 * 0.9) / 400 = 0.7, (0,2) = 0.3;
  // edge mass (100 * 0.2 + 300 * 0.6) / 400 = 0.5.
  auto shrunk = ShrinkToward(own, population, 300);
  ASSERT_TRUE(shrunk.ok()) << shrunk.status();
  EXPECT_NEAR(shrunk->MeanDistance(0, 1), 0.7, 1e-12);
  EXPECT_NEAR(shrunk->MeanDistance(0, 2), 0.3, 1e-12);
  EXPECT_NEAR(shrunk->MeanDistance(1, 2), 0.5, 1e-12);
  EXPECT_NEAR(shrunk->EdgeMass(1), 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(shrunk->rows_represented, 400);

  // 50 rows: own dominates, (0,1) = (10 + 45) / 150 = 0.3667 < (0,2).
  SelectorOptions one_pair;
  one_pair.target_ratio = 1.5;  // 3 layers: one pair
  one_pair.sensitivity_threshold = 1.0;
  auto light = ShrinkToward(own, population, 50);
  ASSERT_TRUE(light.ok());
  auto plan_light = SelectPlan(*light, one_pair);
  auto plan_heavy = SelectPlan(*shrunk, one_pair);
  ASSERT_TRUE(plan_light.ok() && plan_heavy.ok());
  ASSERT_EQ(plan_light->pairs.size(), 1u);
  ASSERT_EQ(plan_heavy->pairs.size(), 1u);
  EXPECT_EQ(plan_light->pairs[0].first, 0);
  EXPECT_EQ(plan_light->pairs[0].second, 1);
  EXPECT_EQ(plan_heavy->pairs[0].first, 0);
  EXPECT_EQ(plan_heavy->pairs[0].second, 2);

  // A population that observed nothing adds nothing.
  auto empty = ShrinkToward(own, SimilarityEstimate::Empty(3), 1000);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->distance, own.distance);
}

TEST(ShrinkTowardTest, RejectsMismatchedOrBadInput) {
  const SimilarityEstimate three = RandomEstimate(3, 1);
  const SimilarityEstimate four = RandomEstimate(4, 2);
  EXPECT_EQ(ShrinkToward(three, four, 10).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShrinkToward(three, three, -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShrinkToward(three, three, NAN).status().code(), absl::StatusCode::kInvalidArgument);
  SimilarityEstimate other_edges = three;
  other_edges.edge_fraction = 0.2;
  EXPECT_EQ(ShrinkToward(three, other_edges, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  SimilarityEstimate broken = three;
  broken.distance.pop_back();
  EXPECT_EQ(ShrinkToward(broken, three, 10).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CompressionPlanTest, RoundTrip) {
  const CompressionPlan plan = SamplePlan();
  ASSERT_TRUE(ValidatePlan(plan).ok());
  const std::string bytes = SerializePlan(plan);
  // Hand count: 48 fixed + 3 * 16 pairs + 2 bitmap + 8 checksum.
  EXPECT_EQ(bytes.size(), 48u + 48u + 2u + 8u);
  EXPECT_EQ(bytes.substr(0, 4), "KRPL");
  auto parsed = ParsePlan(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, plan);
  EXPECT_NEAR(parsed->ratio(), 11.0 / 8.0, 1e-12);
  EXPECT_EQ(PlanDebugString(*parsed),
            "layers=11 ratio=1.38 pairs=[(3,7) (4,5) (1,9)] sensitive=[0 8 10]");

  const CompressionPlan empty = CompressionPlan::Uncompressed(1);
  auto e = ParsePlan(SerializePlan(empty));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(*e, empty);
  EXPECT_EQ(e->ratio(), 1.0);
}

TEST(CompressionPlanTest, RejectsEveryFlippedByteAndTruncation) {
  const std::string bytes = SerializePlan(SamplePlan());
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int bit : {0, 3, 7}) {
      std::string bad = bytes;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      EXPECT_FALSE(ParsePlan(bad).ok()) << "byte " << i << " bit " << bit;
    }
  }
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto r = ParsePlan(std::string_view(bytes).substr(0, n));
    EXPECT_FALSE(r.ok()) << n;
  }
  EXPECT_EQ(ParsePlan(bytes + '\0').status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParsePlan("").status().code(), absl::StatusCode::kDataLoss);
}

TEST(CompressionPlanTest, RejectsSealedButInvalidPlans) {
  const std::string good = SerializePlan(SamplePlan());
  // Version 2 (offset 4).
  std::string v2 = good;
  v2[4] = 2;
  EXPECT_EQ(ParsePlan(Reseal(v2)).status().code(), absl::StatusCode::kUnimplemented);
  // Flags (offset 6).
  std::string flags = good;
  flags[6] = 1;
  EXPECT_EQ(ParsePlan(Reseal(flags)).status().code(), absl::StatusCode::kUnimplemented);
  // Second pair's first layer (offset 48 + 16) := 3: layer 3 twice.
  std::string twice = good;
  twice[64] = 3;
  EXPECT_EQ(ParsePlan(Reseal(twice)).status().code(), absl::StatusCode::kInvalidArgument);
  // First pair's second layer := 200 (out of range).
  std::string range = good;
  range[52] = static_cast<char>(200);
  EXPECT_EQ(ParsePlan(Reseal(range)).status().code(), absl::StatusCode::kInvalidArgument);
  // Mark layer 3 (paired) sensitive in the bitmap (offset 96).
  std::string sens = good;
  sens[96] = static_cast<char>(sens[96] | (1 << 3));
  EXPECT_EQ(ParsePlan(Reseal(sens)).status().code(), absl::StatusCode::kInvalidArgument);
  // A bit past the last layer (layer 11 of 11, byte 97 bit 3).
  std::string past = good;
  past[97] = static_cast<char>(past[97] | (1 << 3));
  EXPECT_EQ(ParsePlan(Reseal(past)).status().code(), absl::StatusCode::kInvalidArgument);
  // n_pairs (offset 44) := 4 without the bytes: size mismatch.
  std::string count = good;
  count[44] = 4;
  EXPECT_EQ(ParsePlan(Reseal(count)).status().code(), absl::StatusCode::kDataLoss);
  // Huge n_layers (offset 8).
  std::string huge = good;
  huge[11] = 0x7f;
  EXPECT_FALSE(ParsePlan(Reseal(huge)).ok());
  // Non-finite target ratio (offset 12..19 := NaN).
  std::string nan = good;
  const double q = std::nan("");
  std::memcpy(nan.data() + 12, &q, 8);
  EXPECT_EQ(ParsePlan(Reseal(nan)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CompressionPlanTest, ValidatePlanNamesProblems) {
  CompressionPlan p = SamplePlan();
  p.pairs.push_back({2, 2, 0});
  EXPECT_EQ(ValidatePlan(p).code(), absl::StatusCode::kInvalidArgument);
  p = SamplePlan();
  p.input_sensitive.pop_back();
  EXPECT_EQ(ValidatePlan(p).code(), absl::StatusCode::kInvalidArgument);
  p = SamplePlan();
  p.n_layers = 0;
  EXPECT_EQ(ValidatePlan(p).code(), absl::StatusCode::kInvalidArgument);
}

// A quality budget picks the ratio: pairs are added, cheapest first, while
// their scores' sum fits; the ratio target only caps them.
TEST(SelectorTest, ScoresAndACumulativeBudget) {
  constexpr int L = 6;
  std::vector<double> scores(L * L, 9.0);
  auto set = [&](int a, int b, double v) { scores[a * L + b] = scores[b * L + a] = v; };
  set(0, 1, 0.004);
  set(2, 3, 0.003);
  set(4, 5, 0.005);
  set(1, 2, 0.001);  // cheapest, but then (0,1) and (2,3) are out
  SelectorOptions o;
  o.target_ratio = 2.0;
  o.quality_budget = 0.0065;
  auto plan = SelectPlanByScore(scores, {}, o);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // (1,2) 0.001 + (4,5) 0.005 = 0.006 fits; (0,3) at 9 does not.
  ASSERT_EQ(plan->pairs.size(), 2u);
  EXPECT_EQ(plan->pairs[0], (LayerPair{1, 2, 0.001}));
  EXPECT_EQ(plan->pairs[1], (LayerPair{4, 5, 0.005}));
  EXPECT_EQ(plan->quality_budget, 0.0065);
  // A budget below the cheapest pair shares nothing.
  o.quality_budget = 0.0005;
  plan = SelectPlanByScore(scores, {}, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->pairs.empty());
  // Protecting layer 1 removes (1,2) and (0,1): (2,3) then (4,5).
  o.quality_budget = 0.0085;
  const std::vector<uint8_t> protect = {0, 1, 0, 0, 0, 0};
  plan = SelectPlanByScore(scores, protect, o);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->pairs.size(), 2u);
  EXPECT_EQ(plan->pairs[0], (LayerPair{2, 3, 0.003}));
  EXPECT_EQ(plan->pairs[1], (LayerPair{4, 5, 0.005}));
  EXPECT_EQ(plan->input_sensitive[1], 1);
  // The ratio still caps: 6 / 5 = 1.2 -> one pair whatever the budget.
  o.target_ratio = 1.2;
  o.quality_budget = 1.0;
  plan = SelectPlanByScore(scores, {}, o);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->pairs.size(), 1u);
  // Malformed input.
  EXPECT_FALSE(SelectPlanByScore(std::vector<double>(35, 1.0), {}, o).ok());
  EXPECT_FALSE(SelectPlanByScore(scores, std::vector<uint8_t>(5, 0), o).ok());
  scores[1] = -1;
  EXPECT_FALSE(SelectPlanByScore(scores, {}, o).ok());
}

// With real weights: estimate over a prompt and a few decoded tokens, then
// select. Checks the pieces fit together on a real attention pattern.
TEST(SelectorTest, RealModelEndToEnd) {
  KRUL_REQUIRE_DATA_FILE(path, "models/krul12L.bin");
  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  auto engine = Engine::Create(**model, EngineOptions{.num_threads = 2});
  ASSERT_TRUE(engine.ok());
  auto est = SimilarityEstimator::Create((*model)->config());
  ASSERT_TRUE(est.ok());
  EXPECT_TRUE((*engine)->SetAttentionObserver(est->get()).ok());
  auto cache = KvCache::Create((*model)->config(), 96);
  ASSERT_TRUE(cache.ok());
  std::vector<int> tokens(96);
  for (int i = 0; i < 96; ++i) tokens[i] = 3 + (i * 41) % 500;
  ASSERT_TRUE((*engine)->Forward(*cache, std::span<const int>(tokens).first(64), 0, {}).ok());
  for (int i = 64; i < 96; ++i) {
    ASSERT_TRUE((*engine)->Forward(*cache, std::span<const int>(tokens).subspan(i, 1), i, {}).ok());
  }
  const SimilarityEstimate e = (*est)->Finish();
  EXPECT_EQ(e.prefill_tokens, 64);
  EXPECT_EQ(e.decode_tokens, 32);
  for (int l = 0; l < e.n_layers; ++l) {
    EXPECT_GE(e.EdgeMass(l), 0.0);
    EXPECT_LE(e.EdgeMass(l), 1.0 + 1e-6);
  }
  SelectorOptions o;
  o.target_ratio = 1.5;
  o.sensitivity_threshold = 1.0;  // nothing sensitive: the ratio must be met
  auto plan = SelectPlan(e, o);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->pairs.size(), 4u);  // 12 / 8 = 1.5
  EXPECT_GE(plan->ratio(), 1.5);
  std::string masses;
  for (int l = 0; l < e.n_layers; ++l) masses += " " + std::to_string(e.EdgeMass(l));
  RecordProperty("plan", PlanDebugString(*plan));
  std::cout << "krul12L plan: " << PlanDebugString(*plan) << "\nedge mass:" << masses << "\n";
}

}  // namespace
}  // namespace krul
