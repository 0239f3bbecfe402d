// The restore planner against an independent event simulation of the two
// streams and brute-force enumeration of every split.
#include "krul/restore/restore_plan.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace krul {
namespace {

// ---- an independent model of the restore, written from the definition ------

struct SimCosts {
  double fixed = 0, per_token = 0, per_pair = 0;  // one layer's compute
  double latency = 0, bandwidth = 1;              // the one load stream
};

// Compute seconds of one layer over queries at positions [start, start + n):
// query at position p reads p + 1 keys.
double SimCompute(const SimCosts& c, int start, int n) {
  if (n <= 0) return 0;
  double pairs = 0;
  for (int p = start; p < start + n; ++p) pairs += p + 1;
  return c.fixed + c.per_token * n + c.per_pair * pairs;
}

struct SimGroup {
  std::vector<int> layers;
  double both = 0;  // bytes/token for tokens all layers of the group need
  double tail = 0;  // bytes/token for tokens only one layer needs
};

// Load requests, one per layer in layer order: the tokens of [n_l, N) that
// no earlier request brought. A request for a pair's layer also brings the
// partner's tokens that the partner needs; a token needed by both layers is
// stored once (merged, `both` bytes), a token only one needs costs `tail`.
struct SimRequest {
  int layer;
  double bytes;
};
std::vector<SimRequest> SimLoads(const std::vector<SimGroup>& groups, int L, int N,
                                 const std::vector<int>& n) {
  std::vector<int> group_of(L);
  for (size_t g = 0; g < groups.size(); ++g) {
    for (int l : groups[g].layers) group_of[l] = static_cast<int>(g);
  }
  // present[l][t]: token t of layer l is in the cache (loaded).
  std::vector<std::vector<bool>> present(L, std::vector<bool>(N, false));
  std::vector<SimRequest> out;
  for (int l = 0; l < L; ++l) {
    const SimGroup& g = groups[group_of[l]];
    double bytes = 0;
    for (int t = n[l]; t < N; ++t) {
      if (present[l][t]) continue;
      bool all_need = true;
      for (int k : g.layers) all_need &= t >= n[k];
      bytes += (g.layers.size() > 1 && all_need) ? g.both : (g.layers.size() > 1 ? g.tail : g.both);
      present[l][t] = true;
      if (all_need) {
        for (int k : g.layers) present[k][t] = true;
      }
    }
    if (bytes > 0) out.push_back({l, bytes});
  }
  return out;
}

// Simulated makespan for a given order of the compute stream: `order` lists
// (kind, layer) with kind 0 = recompute R_l, 1 = prefill P_l. Returns +inf
// when the order breaks a dependency.
double SimulateOrder(const SimCosts& c, const std::vector<SimGroup>& groups, int L, int N, int m,
                     const std::vector<int>& n, const std::vector<std::pair<int, int>>& order) {
  std::vector<double> load_done(L, 0);
  // One streamed request: the latency once, before the first bytes.
  const std::vector<SimRequest> requests = SimLoads(groups, L, N, n);
  double t = requests.empty() ? 0 : c.latency;
  for (const SimRequest& r : requests) {
    t += r.bytes / c.bandwidth;
    load_done[r.layer] = t;
  }
  // A layer with no request of its own is loaded once every earlier
  // request is done (its tokens came with an earlier one, or none needed).
  for (int l = 1; l < L; ++l) load_done[l] = std::max(load_done[l], load_done[l - 1]);
  std::vector<double> r_done(L, -1), p_done(L, -1);
  double clock = 0;
  for (auto [kind, l] : order) {
    if (kind == 0) {
      if (l > 0 && r_done[l - 1] < 0) return INFINITY;
      clock += SimCompute(c, 0, n[l]);
      r_done[l] = clock;
    } else {
      if (r_done[l] < 0 || (l > 0 && p_done[l - 1] < 0)) return INFINITY;
      clock = std::max(clock, load_done[l]);
      clock += SimCompute(c, N, m);
      p_done[l] = clock;
    }
  }
  return clock;
}

std::vector<std::pair<int, int>> RecomputeFirstOrder(int L) {
  std::vector<std::pair<int, int>> order;
  for (int l = 0; l < L; ++l) order.push_back({0, l});
  for (int l = 0; l < L; ++l) order.push_back({1, l});
  return order;
}

double Simulate(const SimCosts& c, const std::vector<SimGroup>& groups, int L, int N, int m,
                const std::vector<int>& n) {
  return SimulateOrder(c, groups, L, N, m, n, RecomputeFirstOrder(L));
}

// Every vector in [lb_l, N]^L (pyramid or not) with `accept` true.
void ForEachSplit(int L, int N, const std::function<void(const std::vector<int>&)>& visit) {
  std::vector<int> n(L, 0);
  for (;;) {
    visit(n);
    int l = 0;
    while (l < L && n[l] == N) n[l++] = 0;
    if (l == L) return;
    ++n[l];
  }
}

bool IsPyramid(const std::vector<int>& n) {
  for (size_t l = 0; l + 1 < n.size(); ++l) {
    if (n[l] < n[l + 1]) return false;
  }
  return true;
}

// ---- conversions to the planner's types -------------------------------------

CostCoefficients ToCosts(const SimCosts& c) {
  CostCoefficients k;
  k.compute.fixed_s = c.fixed;
  k.compute.per_token_s = c.per_token;
  k.compute.per_attention_pair_s = c.per_pair;
  k.load.latency_s = c.latency;
  k.load.bytes_per_second = c.bandwidth;
  return k;
}

KvLayout ToLayout(const std::vector<SimGroup>& groups) {
  KvLayout layout;
  for (const SimGroup& g : groups) {
    KvGroup kg;
    kg.layers = g.layers;
    kg.bytes_per_token = g.both;
    kg.tail_bytes_per_token = g.layers.size() > 1 ? g.tail : 0;
    layout.groups.push_back(kg);
  }
  return layout;
}

struct Case {
  int L = 0, N = 0, m = 0;
  SimCosts costs;
  std::vector<SimGroup> groups;
};

Case RandomCase(std::mt19937& rng, int max_layers, int max_tokens, bool with_pairs) {
  auto uni = [&](double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng);
  };
  Case c;
  c.L = std::uniform_int_distribution<int>(1, max_layers)(rng);
  c.N = std::uniform_int_distribution<int>(1, max_tokens)(rng);
  c.m = std::uniform_int_distribution<int>(0, 3)(rng);
  c.costs.fixed = uni(0, 0.5);
  c.costs.per_token = uni(0.1, 1.0);
  c.costs.per_pair = uni(0, 0.2);
  c.costs.latency = uni(0, 1.0);
  c.costs.bandwidth = uni(0.5, 4.0);
  const double plain = uni(0.5, 2.0);
  std::vector<int> layers(c.L);
  for (int l = 0; l < c.L; ++l) layers[l] = l;
  std::shuffle(layers.begin(), layers.end(), rng);
  int pairs = with_pairs ? std::uniform_int_distribution<int>(0, c.L / 2)(rng) : 0;
  std::vector<bool> used(c.L, false);
  for (int p = 0; p < pairs; ++p) {
    int a = layers[2 * p], b = layers[2 * p + 1];
    if (a > b) std::swap(a, b);
    c.groups.push_back({{a, b}, plain * uni(1.0, 1.3), plain});
    used[a] = used[b] = true;
  }
  for (int l = 0; l < c.L; ++l) {
    if (!used[l]) c.groups.push_back({{l}, plain, plain});
  }
  return c;
}

RestoreProblem ToProblem(const Case& c, SplitPolicy policy) {
  RestoreProblem p;
  p.n_layers = c.L;
  p.history_tokens = c.N;
  p.new_tokens = c.m;
  p.layout = ToLayout(c.groups);
  p.policy = policy;
  p.granularity_tokens = 1;
  p.max_grid_points = 1000;
  p.max_front_size = 100000;
  p.search_tolerance = 0;
  return p;
}

void ExpectCovers(const RestorePlan& plan) {
  // Every (layer, token) is recomputed or written by exactly one load
  // step, and loads read only stored tokens.
  for (int l = 0; l < plan.n_layers; ++l) {
    std::vector<int> hits(plan.history_tokens, 0);
    for (int t = 0; t < plan.recompute_tokens[l]; ++t) hits[t]++;
    for (const LoadStep& s : plan.loads) {
      if (std::find(s.write_layers.begin(), s.write_layers.end(), l) == s.write_layers.end()) {
        continue;
      }
      EXPECT_GE(s.begin, plan.stored_begin[s.group]) << "load outside the stored range";
      for (int t = s.begin; t < s.end; ++t) hits[t]++;
    }
    for (int t = 0; t < plan.history_tokens; ++t) {
      ASSERT_EQ(hits[t], 1) << "layer " << l << " token " << t << " " << plan.DebugString();
    }
  }
  // Loads arrive in layer order; the step for layer l fills layer l.
  for (size_t i = 0; i < plan.loads.size(); ++i) {
    const LoadStep& s = plan.loads[i];
    if (i > 0) {
      EXPECT_LT(plan.loads[i - 1].layer, s.layer);
    }
    EXPECT_NE(std::find(s.write_layers.begin(), s.write_layers.end(), s.layer),
              s.write_layers.end());
  }
}

// ---- tests --------------------------------------------------------------------

TEST(RestorePlanTest, HandComputedMakespan) {
  // Two layers, 4 tokens, compute 1 s/token, load 1 byte/token at 1 B/s, no
  // latency, no new input: n = (2, 2) recomputes 4 s and loads 2 + 2 s.
  RestoreProblem p;
  p.n_layers = 2;
  p.history_tokens = 4;
  p.layout = UncompressedLayout(2, 1.0);
  CostCoefficients c;
  c.compute.per_token_s = 1;
  c.load.bytes_per_second = 1;
  EXPECT_DOUBLE_EQ(PredictMakespan(p, c, {2, 2}), 4.0);
  EXPECT_DOUBLE_EQ(PredictMakespan(p, c, {4, 4}), 8.0);
  EXPECT_DOUBLE_EQ(PredictMakespan(p, c, {0, 0}), 8.0);
  EXPECT_DOUBLE_EQ(PredictMakespan(p, c, {3, 1}), 4.0 + 0.0 * 1);  // R 4, loads 1 + 3
  // With a new-input prefill of 1 token at position 4 (1 s per layer): the
  // last layer's load (done at 4) is followed by one prefill; compute does
  // 4 + 2.
  p.new_tokens = 1;
  EXPECT_DOUBLE_EQ(PredictMakespan(p, c, {2, 2}), 6.0);
  // The stream's latency is paid once: 1.5 s delays the loads to 5.5, so
  // the last prefill ends at 6.5 (per request it would be 7 -> 8).
  c.load.latency_s = 1.5;
  EXPECT_DOUBLE_EQ(PredictMakespan(p, c, {2, 2}), 6.5);
  c.load.latency_s = 2.5;  // loads done at 6.5 -> 7.5
  EXPECT_DOUBLE_EQ(PredictMakespan(p, c, {2, 2}), 7.5);
  // Nothing loaded: no latency at all.
  EXPECT_DOUBLE_EQ(PredictMakespan(p, c, {4, 4}), 10.0);
}

TEST(RestorePlanTest, HandComputedStorage) {
  // Layers 0 and 2 share (merged 3 B/token, tail 2 B/token); layer 1 alone at
  // 2 B/token. N = 10, n = (6, 4, 1): pair stores 4 merged + 5 tail tokens.
  KvLayout layout = PairedLayout(3, {{2, 0}}, 2.0, 3.0);
  ASSERT_TRUE(layout.Validate(3).ok());
  EXPECT_DOUBLE_EQ(StoredBytes(layout, 3, 10, {6, 4, 1}), 4 * 3.0 + 5 * 2.0 + 6 * 2.0);
  const std::vector<LoadStep> steps = MakeLoadSteps(layout, 3, 10, {6, 4, 1});
  ASSERT_EQ(steps.size(), 3u);
  EXPECT_EQ(steps[0].layer, 0);
  EXPECT_EQ(steps[0].begin, 6);
  EXPECT_EQ(steps[0].end, 10);
  EXPECT_EQ(steps[0].write_layers, (std::vector<int>{0, 2}));
  EXPECT_DOUBLE_EQ(steps[0].bytes, 12.0);
  EXPECT_EQ(steps[2].layer, 2);
  EXPECT_EQ(steps[2].begin, 1);
  EXPECT_EQ(steps[2].end, 6);
  EXPECT_EQ(steps[2].write_layers, (std::vector<int>{2}));
  EXPECT_DOUBLE_EQ(steps[2].bytes, 10.0);
}

TEST(RestorePlanTest, ClosedFormMatchesSimulation) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    Case c = RandomCase(rng, 5, 12, true);
    RestoreProblem p = ToProblem(c, SplitPolicy::kPyramid);
    ASSERT_TRUE(p.Validate().ok());
    std::vector<int> n(c.L);
    std::uniform_int_distribution<int> tok(0, c.N);
    for (int& v : n) v = tok(rng);
    std::sort(n.rbegin(), n.rend());
    const double sim = Simulate(c.costs, c.groups, c.L, c.N, c.m, n);
    EXPECT_NEAR(PredictMakespan(p, ToCosts(c.costs), n), sim, 1e-9 * (1 + sim));
    EXPECT_NEAR(
        StoredBytes(p.layout, c.L, c.N, n),
        [&] {
          double b = 0;
          for (const SimRequest& r : SimLoads(c.groups, c.L, c.N, n)) b += r.bytes;
          return b;
        }(),
        1e-9);
  }
}

TEST(RestorePlanTest, RecomputeFirstIsTheBestComputeOrder) {
  // The planner's timing model runs every recompute before any prefill;
  // check against every valid interleaving of the two chains.
  std::mt19937 rng(11);
  for (int trial = 0; trial < 60; ++trial) {
    Case c = RandomCase(rng, 4, 8, true);
    c.m = std::uniform_int_distribution<int>(1, 4)(rng);
    std::vector<int> n(c.L);
    std::uniform_int_distribution<int> tok(0, c.N);
    for (int& v : n) v = tok(rng);
    std::sort(n.rbegin(), n.rend());
    const double first = Simulate(c.costs, c.groups, c.L, c.N, c.m, n);
    // Interleavings: choose which of the 2L slots hold R's.
    const int slots = 2 * c.L;
    for (int mask = 0; mask < (1 << slots); ++mask) {
      if (__builtin_popcount(mask) != c.L) continue;
      std::vector<std::pair<int, int>> order;
      int r = 0, pp = 0;
      for (int s = 0; s < slots; ++s)
        order.push_back((mask >> s) & 1 ? std::pair{0, r++} : std::pair{1, pp++});
      const double t = SimulateOrder(c.costs, c.groups, c.L, c.N, c.m, n, order);
      EXPECT_GE(t, first - 1e-9);
    }
  }
}

TEST(RestorePlanTest, PyramidPlanIsOptimalByBruteForce) {
  std::mt19937 rng(1234);
  int checked = 0;
  for (int trial = 0; trial < 120; ++trial) {
    Case c = RandomCase(rng, 5, 8, /*with_pairs=*/true);
    RestoreProblem p = ToProblem(c, SplitPolicy::kPyramid);
    auto plan = PlanRestore(p, ToCosts(c.costs));
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_TRUE(plan->exact);
    double best = INFINITY;
    ForEachSplit(c.L, c.N, [&](const std::vector<int>& n) {
      if (!IsPyramid(n)) return;
      best = std::min(best, Simulate(c.costs, c.groups, c.L, c.N, c.m, n));
    });
    const double got = Simulate(c.costs, c.groups, c.L, c.N, c.m, plan->recompute_tokens);
    EXPECT_NEAR(got, best, 1e-9 * (1 + best)) << "trial " << trial << " " << plan->DebugString();
    EXPECT_NEAR(plan->predicted_seconds, got, 1e-9 * (1 + got));
    // The ideal bound is at most the best perfectly overlapped pyramid:
    // compute stream total vs load stream total + one prefill, by brute force.
    double best_overlap = INFINITY, best_any = INFINITY;
    ForEachSplit(c.L, c.N, [&](const std::vector<int>& n) {
      best_any = std::min(best_any, Simulate(c.costs, c.groups, c.L, c.N, c.m, n));
      if (!IsPyramid(n)) return;
      double compute = c.L * SimCompute(c.costs, c.N, c.m), load = SimCompute(c.costs, c.N, c.m);
      for (int l = 0; l < c.L; ++l) compute += SimCompute(c.costs, 0, n[l]);
      const std::vector<SimRequest> requests = SimLoads(c.groups, c.L, c.N, n);
      if (!requests.empty()) load += c.costs.latency;
      for (const SimRequest& r : requests) load += r.bytes / c.costs.bandwidth;
      best_overlap = std::min(best_overlap, std::max(compute, load));
    });
    EXPECT_LE(plan->lower_bound_seconds, best_overlap + 1e-9);
    EXPECT_GT(plan->lower_bound_seconds, 0);
    // The relaxed bound holds even against non-pyramid splits.
    EXPECT_LE(plan->relaxed_lower_bound_seconds, best_any + 1e-9);
    EXPECT_TRUE(IsPyramid(plan->recompute_tokens));
    ExpectCovers(*plan);
    ++checked;
  }
  EXPECT_EQ(checked, 120);
}

TEST(RestorePlanTest, UniformPlanIsBestUniformSplit) {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 100; ++trial) {
    Case c = RandomCase(rng, 5, 10, false);
    auto plan = PlanRestore(ToProblem(c, SplitPolicy::kUniform), ToCosts(c.costs));
    ASSERT_TRUE(plan.ok());
    double best = INFINITY;
    for (int v = 0; v <= c.N; ++v) {
      best = std::min(best, Simulate(c.costs, c.groups, c.L, c.N, c.m, std::vector<int>(c.L, v)));
    }
    for (int v : plan->recompute_tokens) EXPECT_EQ(v, plan->recompute_tokens[0]);
    EXPECT_NEAR(Simulate(c.costs, c.groups, c.L, c.N, c.m, plan->recompute_tokens), best,
                1e-9 * (1 + best));
    ExpectCovers(*plan);
  }
}

TEST(RestorePlanTest, FixedPolicies) {
  std::mt19937 rng(5);
  Case c = RandomCase(rng, 5, 10, true);
  auto all = PlanRestore(ToProblem(c, SplitPolicy::kRecomputeAll), ToCosts(c.costs));
  ASSERT_TRUE(all.ok());
  for (int v : all->recompute_tokens) EXPECT_EQ(v, c.N);
  EXPECT_TRUE(all->loads.empty());
  EXPECT_EQ(all->stored_bytes, 0);
  auto none = PlanRestore(ToProblem(c, SplitPolicy::kLoadAll), ToCosts(c.costs));
  ASSERT_TRUE(none.ok());
  for (int v : none->recompute_tokens) EXPECT_EQ(v, 0);
  ExpectCovers(*none);
}

TEST(RestorePlanTest, ReplanOnlyAddsRecomputeAndStaysOptimal) {
  std::mt19937 rng(2024);
  for (int trial = 0; trial < 80; ++trial) {
    Case c = RandomCase(rng, 4, 8, true);
    auto stored = PlanRestore(ToProblem(c, SplitPolicy::kPyramid), ToCosts(c.costs));
    ASSERT_TRUE(stored.ok());
    // The link got slower or faster by up to 8x.
    Case now = c;
    now.costs.bandwidth *= std::pow(2.0, std::uniform_real_distribution<double>(-3, 3)(rng));
    now.costs.latency *= std::uniform_real_distribution<double>(0.5, 3)(rng);
    auto re = Replan(*stored, ToCosts(now.costs));
    ASSERT_TRUE(re.ok()) << re.status();
    for (int l = 0; l < c.L; ++l) {
      EXPECT_GE(re->recompute_tokens[l], stored->recompute_tokens[l]) << "layer " << l;
    }
    EXPECT_TRUE(IsPyramid(re->recompute_tokens));
    // Loads stay inside what was stored.
    for (const LoadStep& s : re->loads) {
      EXPECT_GE(s.begin, stored->stored_begin[s.group]);
      for (int l : s.write_layers) EXPECT_GE(s.begin, stored->recompute_tokens[l]);
    }
    ExpectCovers(*re);
    // Optimal among splits that load only stored tokens.
    double best = INFINITY;
    ForEachSplit(c.L, c.N, [&](const std::vector<int>& n) {
      if (!IsPyramid(n)) return;
      for (int l = 0; l < c.L; ++l) {
        if (n[l] < stored->recompute_tokens[l]) return;
      }
      best = std::min(best, Simulate(now.costs, now.groups, c.L, c.N, c.m, n));
    });
    EXPECT_NEAR(re->predicted_seconds, best, 1e-9 * (1 + best))
        << re->DebugString() << " stored " << stored->DebugString();
  }
}

TEST(RestorePlanTest, LargeProblemIsFastAndSound) {
  // 32 layers, 8K tokens, 8 pairs: the search must stay interactive (it runs
  // again at restore time) and produce a sound plan.
  Case c;
  c.L = 32;
  c.N = 8192;
  c.m = 128;
  c.costs = {1e-4, 2e-5, 2e-9, 1e-4, 4e9};
  for (int l = 0; l < 32; ++l) {
    if (l >= 8 && l < 24) {
      if (l % 2 == 0) c.groups.push_back({{l, l + 1}, 70000, 65536});
    } else {
      c.groups.push_back({{l}, 65536, 65536});
    }
  }
  RestoreProblem p = ToProblem(c, SplitPolicy::kPyramid);
  p.granularity_tokens = 64;
  p.max_grid_points = 65;
  p.max_front_size = 128;
  auto plan = PlanRestore(p, ToCosts(c.costs));
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(IsPyramid(plan->recompute_tokens));
  ExpectCovers(*plan);
  EXPECT_LE(plan->lower_bound_seconds, plan->predicted_seconds * (1 + 1e-9));
  // Thinned or not, the plan is close to the ideal bound.
  EXPECT_LE(plan->predicted_seconds, 1.02 * plan->lower_bound_seconds) << plan->DebugString();
  RestoreProblem u = p;
  u.policy = SplitPolicy::kUniform;
  auto uniform = PlanRestore(u, ToCosts(c.costs));
  ASSERT_TRUE(uniform.ok());
  EXPECT_LE(plan->predicted_seconds, uniform->predicted_seconds * (1 + 1e-12));
  // Balanced costs: neither pure strategy should be the answer.
  EXPECT_LT(plan->predicted_seconds,
            PredictMakespan(p, ToCosts(c.costs), std::vector<int>(32, 0)) * 0.9);
  EXPECT_LT(plan->predicted_seconds,
            PredictMakespan(p, ToCosts(c.costs), std::vector<int>(32, 8192)) * 0.9);
}

TEST(RestorePlanTest, DefaultSearchIsNearTheExactOne) {
  // Pairs chosen by similarity span several layers: the hard case for the
  // search (open pairs widen the fronts). With the default tolerance and
  // front bound the plan must stay within 1% of the exact search on the
  // same grid (exhaustive fronts, small enough to finish here).
  for (int N : {512, 2048, 8192}) {
    Case c;
    c.L = 8;
    c.N = N;
    c.m = 128;
    c.costs = {5e-3, 3e-5, 8e-8, 9e-5, 9e6};
    std::vector<bool> used(c.L, false);
    for (auto [a, b] : std::vector<std::pair<int, int>>{{0, 6}, {1, 2}, {3, 5}}) {
      c.groups.push_back({{a, b}, 1100, 1024});
      used[a] = used[b] = true;
    }
    for (int l = 0; l < c.L; ++l) {
      if (!used[l]) c.groups.push_back({{l}, 1024, 1024});
    }
    RestoreProblem p = ToProblem(c, SplitPolicy::kPyramid);
    p.granularity_tokens = 16;
    p.max_grid_points = 33;
    p.max_front_size = 128;
    p.search_tolerance = 1e-4;
    auto plan = PlanRestore(p, ToCosts(c.costs));
    ASSERT_TRUE(plan.ok());
    ExpectCovers(*plan);
    EXPECT_LE(plan->lower_bound_seconds, plan->predicted_seconds * (1 + 1e-9));
    RestoreProblem exact_problem = p;
    exact_problem.search_tolerance = 0;
    exact_problem.max_front_size = 1 << 20;
    auto exact = PlanRestore(exact_problem, ToCosts(c.costs));
    ASSERT_TRUE(exact.ok());
    EXPECT_TRUE(exact->exact);
    EXPECT_LE(plan->predicted_seconds, 1.01 * exact->predicted_seconds)
        << plan->DebugString() << " vs " << exact->DebugString();
  }
}

TEST(RestorePlanTest, RejectsBadProblems) {
  RestoreProblem p;
  p.n_layers = 2;
  p.history_tokens = 4;
  p.layout = UncompressedLayout(2, 1);
  CostCoefficients c;
  EXPECT_TRUE(PlanRestore(p, c).ok());
  RestoreProblem q = p;
  q.layout.groups.pop_back();
  EXPECT_EQ(PlanRestore(q, c).status().code(), absl::StatusCode::kInvalidArgument);
  q = p;
  q.layout.groups[1].layers = {0};
  EXPECT_EQ(PlanRestore(q, c).status().code(), absl::StatusCode::kInvalidArgument);
  q = p;
  q.layout.groups[0].bytes_per_token = 0;
  EXPECT_EQ(PlanRestore(q, c).status().code(), absl::StatusCode::kInvalidArgument);
  q = p;
  q.history_tokens = -1;
  EXPECT_EQ(PlanRestore(q, c).status().code(), absl::StatusCode::kInvalidArgument);
  q = p;
  q.min_recompute_tokens = {5, 0};
  EXPECT_EQ(PlanRestore(q, c).status().code(), absl::StatusCode::kInvalidArgument);
  q = p;
  q.layout = KvLayout{{{{1, 0}, 1.0, 0}}};
  EXPECT_EQ(PlanRestore(q, c).status().code(), absl::StatusCode::kInvalidArgument);
  RestorePlan bad;
  bad.n_layers = 2;
  bad.history_tokens = 4;
  bad.layout = p.layout;
  bad.recompute_tokens = {1, 3};
  EXPECT_EQ(Replan(bad, c).status().code(), absl::StatusCode::kInvalidArgument);
}

// MeasuredRestoreBound against brute force over every pyramid, with the
// costs written out independently from its definition.
TEST(RestorePlanTest, MeasuredBoundIsTheBestSplitOfTheRestoresOwnCosts) {
  std::mt19937 rng(17);
  auto uni = [&](double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(rng);
  };
  for (int trial = 0; trial < 150; ++trial) {
    Case c = RandomCase(rng, 4, 9, /*with_pairs=*/true);
    RestoreProblem p = ToProblem(c, SplitPolicy::kPyramid);
    const CostCoefficients shape = ToCosts(c.costs);
    // What was stored: a random pyramid; what ran: at least that.
    std::vector<int> stored(c.L), ran(c.L);
    for (int& v : stored) v = std::uniform_int_distribution<int>(0, c.N)(rng);
    std::sort(stored.rbegin(), stored.rend());
    for (int l = 0; l < c.L; ++l) ran[l] = std::uniform_int_distribution<int>(stored[l], c.N)(rng);
    std::sort(ran.rbegin(), ran.rend());
    for (int l = 0; l < c.L; ++l) ran[l] = std::max(ran[l], stored[l]);
    RestoreProblem executed_problem = p;
    executed_problem.policy = SplitPolicy::kRecomputeAll;
    auto executed = PlanRestore(executed_problem, shape);
    ASSERT_TRUE(executed.ok());
    executed->policy = SplitPolicy::kPyramid;
    executed->recompute_tokens = ran;
    executed->loads = MakeLoadSteps(p.layout, c.L, c.N, ran);
    // Measurements: each layer ran at its own speed relative to the model.
    RestoreMeasurement m;
    std::vector<double> scale(c.L);
    double measured_r = 0, modelled_r = 0;
    for (int l = 0; l < c.L; ++l) {
      scale[l] = uni(0.5, 2.0);
      const double model = SimCompute(c.costs, 0, ran[l]);
      m.recompute_seconds.push_back(ran[l] > 0 ? scale[l] * model : 0);
      if (ran[l] > 0) {
        measured_r += scale[l] * model;
        modelled_r += model;
      }
      m.prefill_seconds.push_back(uni(0.0, 0.5));
    }
    const double average = modelled_r > 0 ? measured_r / modelled_r : 1.0;
    for (int l = 0; l < c.L; ++l) {
      if (ran[l] == 0) scale[l] = average;
    }
    m.other_compute_seconds = uni(0, 0.2);
    m.tail_seconds = uni(0, 0.1);
    double ran_bytes = 0;
    for (const LoadStep& st : executed->loads) ran_bytes += st.bytes;
    double spb = 1 / c.costs.bandwidth, latency = c.costs.latency;
    if (ran_bytes > 0) {
      m.load_latency_seconds = uni(0, 0.5);
      m.load_seconds = m.load_latency_seconds + ran_bytes * uni(0.2, 3.0) / c.costs.bandwidth;
      latency = m.load_latency_seconds;
      spb = (m.load_seconds - latency) / ran_bytes;
    }
    double prefill_sum = 0;
    for (double v : m.prefill_seconds) prefill_sum += v;
    auto streams = [&](const std::vector<int>& n) {
      double a = prefill_sum + m.other_compute_seconds;
      for (int l = 0; l < c.L; ++l) a += scale[l] * SimCompute(c.costs, 0, n[l]);
      double b = m.prefill_seconds[c.L - 1] + m.tail_seconds;
      const std::vector<SimRequest> requests = SimLoads(c.groups, c.L, c.N, n);
      if (!requests.empty()) b += latency;
      for (const SimRequest& r : requests) b += r.bytes * spb;
      return std::pair<double, double>(a, b);
    };
    double best = INFINITY, min_a = INFINITY, min_b = INFINITY;
    ForEachSplit(c.L, c.N, [&](const std::vector<int>& n) {
      if (!IsPyramid(n)) return;
      for (int l = 0; l < c.L; ++l) {
        if (n[l] < stored[l]) return;
      }
      const auto [a, b] = streams(n);
      best = std::min(best, std::max(a, b));
      min_a = std::min(min_a, a);
      min_b = std::min(min_b, b);
    });
    const double bound = MeasuredRestoreBound(*executed, stored, shape, m);
    const auto [ran_a, ran_b] = streams(ran);
    const double tol = 1e-9 * (1 + best);
    // A lower bound on the best split, hence on what the restore achieved
    // (each stream took at least its measured time) ...
    EXPECT_LE(bound, best + tol) << "trial " << trial;
    EXPECT_LE(bound, std::max(ran_a, ran_b) + tol) << "trial " << trial;
    // ... and at least what either stream alone needs at its best split
    // (the dual at lambda = 1 and 0).
    EXPECT_GE(bound, std::max(min_a, min_b) - tol) << "trial " << trial;
  }
}

TEST(RestorePlanTest, MeasuredBoundHandComputed) {
  // Two layers, 4 tokens, 1 byte per token. The restore recomputed n = (2, 2)
  // in 2 s per layer (1 s per token) and loaded 4 bytes in 5 s, 1 s of it
  // latency (1 s per byte). Prefill 0.5 s per layer, nothing else.
  // Any split n: A = n_0 + n_1 + 1, B = [loads] 1 + (8 - n_0 - n_1) + 0.5.
  // The best pyramid balances A and B: n_0 + n_1 = 4 or 5 -> max(5, 5.5) or
  // max(6, 4.5): 5.5.
  RestorePlan executed;
  executed.n_layers = 2;
  executed.history_tokens = 4;
  executed.layout = UncompressedLayout(2, 1.0);
  executed.policy = SplitPolicy::kPyramid;
  executed.recompute_tokens = {2, 2};
  executed.loads = MakeLoadSteps(executed.layout, 2, 4, {2, 2});
  CostCoefficients shape;
  shape.compute.per_token_s = 3;  // only the curve's shape matters: linear
  shape.load.bytes_per_second = 1;
  RestoreMeasurement m;
  m.recompute_seconds = {2, 2};
  m.prefill_seconds = {0.5, 0.5};
  m.load_seconds = 5;
  m.load_latency_seconds = 1;
  const double bound = MeasuredRestoreBound(executed, {0, 0}, shape, m);
  // The Lagrangian dual of this integer problem sits at the continuous
  // balance, n_0 + n_1 = 4.25: 5.25 (never above the integer 5.5).
  EXPECT_NEAR(bound, 5.25, 1e-6);
  // Everything stored as recompute only: the one split is n = (4, 4), A = 9.
  EXPECT_NEAR(MeasuredRestoreBound(executed, {4, 4}, shape, m), 9.0, 1e-9);
  // Inputs that do not fit the plan: 0.
  RestoreMeasurement wrong = m;
  wrong.prefill_seconds = {0.5};
  EXPECT_EQ(MeasuredRestoreBound(executed, {0, 0}, shape, wrong), 0);
}

TEST(RestorePlanTest, EmptyHistory) {
  RestoreProblem p;
  p.n_layers = 3;
  p.history_tokens = 0;
  p.new_tokens = 5;
  p.layout = UncompressedLayout(3, 1);
  CostCoefficients c;
  c.compute.per_token_s = 1;
  auto plan = PlanRestore(p, c);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->loads.empty());
  EXPECT_DOUBLE_EQ(plan->predicted_seconds, 15.0);
}

}  // namespace
}  // namespace krul
