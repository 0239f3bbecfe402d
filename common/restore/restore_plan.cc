#include "krul/restore/restore_plan.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace krul {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// What a layer's load request looks like.
enum class Role { kSingle, kPairHead, kPairTail };

struct LayerInfo {
  int group = 0;
  Role role = Role::kSingle;
  int pair = -1;  // pair index for heads and tails
  int head = -1;  // the pair's first layer (for tails)
  double bytes_per_token = 0;
};

std::vector<LayerInfo> LayerInfos(const KvLayout& layout, int n_layers) {
  std::vector<LayerInfo> info(n_layers);
  int pair = 0;
  for (size_t g = 0; g < layout.groups.size(); ++g) {
    const KvGroup& group = layout.groups[g];
    for (int l : group.layers) {
      info[l].group = static_cast<int>(g);
      info[l].bytes_per_token = group.bytes_per_token;
    }
    if (group.layers.size() == 2) {
      const int a = group.layers[0], b = group.layers[1];
      info[a].role = Role::kPairHead;
      info[b].role = Role::kPairTail;
      info[b].bytes_per_token = group.TailBytesPerToken();
      info[a].pair = info[b].pair = pair++;
      info[b].head = a;
    }
  }
  return info;
}

// The lower bounds made into a pyramid: n_l >= n_{l+1} >= min_{l+1} forces
// n_l >= min_{l+1}.
std::vector<int> PyramidMinimums(const RestoreProblem& p) {
  std::vector<int> lb(p.n_layers, 0);
  if (!p.min_recompute_tokens.empty()) lb = p.min_recompute_tokens;
  for (int l = p.n_layers - 2; l >= 0; --l) lb[l] = std::max(lb[l], lb[l + 1]);
  return lb;
}

// Tokens layer l's load request brings (see the header's load stream).
int LoadTokens(const LayerInfo& info, int history, const std::vector<int>& n, int l) {
  switch (info.role) {
    case Role::kSingle:
    case Role::kPairHead:
      return history - n[l];
    case Role::kPairTail:
      return n[info.head] - n[l];
  }
  return 0;
}

// Seconds one load step adds to the stream: its bytes, plus the stream's
// latency when it is the first step that loads anything (one streamed
// request per restore).
double StreamStepSeconds(const LoadCoefficients& load, double bytes, bool stream_started) {
  if (bytes <= 0) return 0;
  return (stream_started ? 0 : load.latency_s) + bytes / load.bytes_per_second;
}

// The splits the lower bounds range over: every token for usual lengths
// (a bound should not depend on the planner's grid), a fine grid beyond,
// plus N and every layer's minimum; with each split's recompute time.
struct BoundSplits {
  std::vector<int> values;  // ascending, distinct
  std::vector<double> recompute_s;
};

BoundSplits MakeBoundSplits(int N, const std::vector<int>& lb, const ComputeCoefficients& compute) {
  BoundSplits s;
  const int step = std::max(1, N / 8192);
  for (int v = 0; v < N; v += step) s.values.push_back(v);
  s.values.push_back(N);
  for (int v : lb) s.values.push_back(v);
  std::sort(s.values.begin(), s.values.end());
  s.values.erase(std::unique(s.values.begin(), s.values.end()), s.values.end());
  for (int v : s.values) s.recompute_s.push_back(compute.LayerSeconds(0, v));
  return s;
}

// The maximum over [0, 1] of a concave function (a Lagrangian dual, whose
// every value is a valid lower bound): golden-section search, endpoints
// checked.
double MaximizeConcave(const std::function<double(double)>& f) {
  double lo = 0, hi = 1;
  double best = std::max(f(0), f(1));
  const double phi = (std::sqrt(5.0) - 1) / 2;
  double x1 = hi - phi * (hi - lo), x2 = lo + phi * (hi - lo);
  double f1 = f(x1), f2 = f(x2);
  for (int it = 0; it < 40; ++it) {
    if (f1 < f2) {
      lo = x1;
      x1 = x2;
      f1 = f2;
      x2 = lo + phi * (hi - lo);
      f2 = f(x2);
    } else {
      hi = x2;
      x2 = x1;
      f2 = f1;
      x1 = hi - phi * (hi - lo);
      f1 = f(x1);
    }
  }
  return std::max({best, f1, f2});
}

}  // namespace

// ---- layout ---------------------------------------------------------------

absl::Status KvLayout::Validate(int n_layers) const {
  if (n_layers < 1) return absl::InvalidArgumentError("layout needs n_layers >= 1");
  std::vector<int> seen(n_layers, 0);
  for (size_t g = 0; g < groups.size(); ++g) {
    const KvGroup& group = groups[g];
    if (group.layers.empty() || group.layers.size() > 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("layout group ", g, " has ", group.layers.size(), " layers; want 1 or 2"));
    }
    if (group.layers.size() == 2 && group.layers[0] >= group.layers[1]) {
      return absl::InvalidArgumentError(absl::StrCat("layout group ", g, " is not ascending"));
    }
    if (!(group.bytes_per_token > 0) || !std::isfinite(group.bytes_per_token) ||
        !(group.tail_bytes_per_token >= 0) || !std::isfinite(group.tail_bytes_per_token)) {
      return absl::InvalidArgumentError(
          absl::StrCat("layout group ", g, " bytes_per_token must be finite and > 0 (tail: >= 0)"));
    }
    for (int l : group.layers) {
      if (l < 0 || l >= n_layers) {
        return absl::InvalidArgumentError(
            absl::StrCat("layout group ", g, " names layer ", l, " outside [0, ", n_layers, ")"));
      }
      if (seen[l]++) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", l, " is in two layout groups"));
      }
    }
  }
  for (int l = 0; l < n_layers; ++l) {
    if (!seen[l])
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, " is in no layout group"));
  }
  return absl::OkStatus();
}

std::vector<int> KvLayout::GroupOfLayer(int n_layers) const {
  std::vector<int> of(n_layers, -1);
  for (size_t g = 0; g < groups.size(); ++g) {
    for (int l : groups[g].layers) of[l] = static_cast<int>(g);
  }
  return of;
}

KvLayout UncompressedLayout(int n_layers, double layer_bytes_per_token) {
  KvLayout layout;
  for (int l = 0; l < n_layers; ++l) layout.groups.push_back({{l}, layer_bytes_per_token, 0});
  return layout;
}

KvLayout PairedLayout(int n_layers, const std::vector<std::pair<int, int>>& pairs,
                      double layer_bytes_per_token, double pair_bytes_per_token) {
  KvLayout layout;
  std::vector<int> paired(std::max(n_layers, 0), 0);
  for (auto [a, b] : pairs) {
    if (a > b) std::swap(a, b);
    layout.groups.push_back({{a, b}, pair_bytes_per_token, layer_bytes_per_token});
    if (a >= 0 && a < n_layers) paired[a] = 1;
    if (b >= 0 && b < n_layers) paired[b] = 1;
  }
  for (int l = 0; l < n_layers; ++l) {
    if (!paired[l]) layout.groups.push_back({{l}, layer_bytes_per_token, 0});
  }
  // Groups in order of their first layer: easier to read in logs.
  std::sort(layout.groups.begin(), layout.groups.end(),
            [](const KvGroup& x, const KvGroup& y) { return x.layers[0] < y.layers[0]; });
  return layout;
}

absl::Status RestoreProblem::Validate() const {
  if (n_layers < 1) return absl::InvalidArgumentError("RestoreProblem.n_layers must be >= 1");
  if (history_tokens < 0) return absl::InvalidArgumentError("RestoreProblem.history_tokens < 0");
  if (new_tokens < 0) return absl::InvalidArgumentError("RestoreProblem.new_tokens < 0");
  if (granularity_tokens < 1) {
    return absl::InvalidArgumentError("RestoreProblem.granularity_tokens must be >= 1");
  }
  if (max_grid_points < 2) return absl::InvalidArgumentError("RestoreProblem.max_grid_points < 2");
  if (max_front_size < 1) return absl::InvalidArgumentError("RestoreProblem.max_front_size < 1");
  if (!(search_tolerance >= 0 && search_tolerance < 0.1)) {
    return absl::InvalidArgumentError("RestoreProblem.search_tolerance must be in [0, 0.1)");
  }
  if (auto s = layout.Validate(n_layers); !s.ok()) return s;
  if (!min_recompute_tokens.empty()) {
    if (static_cast<int>(min_recompute_tokens.size()) != n_layers) {
      return absl::InvalidArgumentError(
          "RestoreProblem.min_recompute_tokens must be empty or hold one count per layer");
    }
    for (int l = 0; l < n_layers; ++l) {
      const int v = min_recompute_tokens[l];
      if (v < 0 || v > history_tokens) {
        return absl::InvalidArgumentError(
            absl::StrCat("RestoreProblem.min_recompute_tokens[", l, "]=", v, " outside [0, N]"));
      }
    }
  }
  return absl::OkStatus();
}

// ---- evaluation -------------------------------------------------------------

std::vector<LoadStep> MakeLoadSteps(const KvLayout& layout, int n_layers, int history_tokens,
                                    const std::vector<int>& n) {
  const std::vector<LayerInfo> info = LayerInfos(layout, n_layers);
  std::vector<LoadStep> steps;
  for (int l = 0; l < n_layers; ++l) {
    const LayerInfo& li = info[l];
    LoadStep step;
    step.layer = l;
    step.group = li.group;
    switch (li.role) {
      case Role::kSingle:
        step.begin = n[l];
        step.end = history_tokens;
        step.write_layers = {l};
        break;
      case Role::kPairHead:
        // One transfer serves both layers of the pair for these tokens.
        step.begin = n[l];
        step.end = history_tokens;
        step.write_layers = layout.groups[li.group].layers;
        break;
      case Role::kPairTail:
        // The head already brought [n_head, N) for this layer too.
        step.begin = n[l];
        step.end = n[li.head];
        step.write_layers = {l};
        break;
    }
    if (step.end <= step.begin) continue;
    step.bytes = static_cast<double>(step.end - step.begin) * li.bytes_per_token;
    steps.push_back(std::move(step));
  }
  return steps;
}

double StoredBytes(const KvLayout& layout, int n_layers, int history_tokens,
                   const std::vector<int>& n) {
  double bytes = 0;
  for (const KvGroup& g : layout.groups) {
    int lo = history_tokens, hi = 0;
    for (int l : g.layers) {
      lo = std::min(lo, n[l]);
      hi = std::max(hi, n[l]);
    }
    bytes += static_cast<double>(history_tokens - hi) * g.bytes_per_token +
             static_cast<double>(hi - lo) * g.TailBytesPerToken();
  }
  return bytes;
}

double PredictMakespan(const RestoreProblem& p, const CostCoefficients& costs,
                       const std::vector<int>& n) {
  const std::vector<LayerInfo> info = LayerInfos(p.layout, p.n_layers);
  const int L = p.n_layers;
  const double prefill = costs.compute.LayerSeconds(p.history_tokens, p.new_tokens);
  double recompute = 0, load = 0, worst = 0;
  for (int l = 0; l < L; ++l) {
    recompute += costs.compute.LayerSeconds(0, n[l]);
    const int tokens = LoadTokens(info[l], p.history_tokens, n, l);
    load += StreamStepSeconds(costs.load, tokens * info[l].bytes_per_token, load > 0);
    worst = std::max(worst, load + (L - l) * prefill);
  }
  return std::max(recompute + L * prefill, worst);
}

double RelaxedRestoreLowerBound(const RestoreProblem& p, const CostCoefficients& costs) {
  const int L = p.n_layers, N = p.history_tokens;
  const std::vector<int> lb = PyramidMinimums(p);
  const double prefill = costs.compute.LayerSeconds(N, p.new_tokens);
  const LoadCoefficients& load = costs.load;
  const BoundSplits splits = MakeBoundSplits(N, lb, costs.compute);
  const std::vector<int>& values = splits.values;
  const std::vector<double>& r = splits.recompute_s;
  const size_t V = values.size();

  // dual(lambda) = min over splits of lambda * A + (1 - lambda) * B with
  // A = T_R + L*P and B = (all loads) + P, which is separable per group once
  // the pyramid and the ordering are dropped, apart from the stream's one
  // latency: the minimum is taken over the splits that load nothing (no
  // latency) and those that may load (latency charged once).
  //  - one layer, split m >= lb: lambda R(m) + (1-lambda) Req(w (N - m))
  //  - a pair with splits M >= m (M >= max lb, m >= min lb): bytes are
  //    w (N - M) + t (M - m) (w merged, t tail), so for fixed m the best M
  //    minimizes h(M) = lambda R(M) - (1-lambda) (w - t) M / bw over M >= m:
  //    a suffix minimum.
  std::vector<double> h(V), suffix(V + 1);
  auto dual = [&](double lambda) {
    double total = lambda * L * prefill + (1 - lambda) * (prefill + load.latency_s);
    double none_loaded = lambda * L * prefill + (1 - lambda) * prefill;
    for (const KvGroup& g : p.layout.groups) {
      double best = kInf;
      if (g.layers.size() == 1) {
        const int lo = lb[g.layers[0]];
        for (size_t i = 0; i < V; ++i) {
          if (values[i] < lo) continue;
          best = std::min(best, lambda * r[i] + (1 - lambda) * (N - values[i]) * g.bytes_per_token /
                                                    load.bytes_per_second);
        }
      } else {
        const int lo = std::min(lb[g.layers[0]], lb[g.layers[1]]);
        const int hi = std::max(lb[g.layers[0]], lb[g.layers[1]]);
        const double w = g.bytes_per_token, t = g.TailBytesPerToken();
        suffix[V] = kInf;
        for (size_t i = V; i-- > 0;) {
          h[i] = values[i] < hi
                     ? kInf
                     : lambda * r[i] - (1 - lambda) * (w - t) * values[i] / load.bytes_per_second;
          suffix[i] = std::min(suffix[i + 1], h[i]);
        }
        for (size_t i = 0; i < V; ++i) {
          const int m = values[i];
          if (m < lo) continue;
          if (m == N) {  // nothing loaded: no request at all
            best = std::min(best, lambda * 2 * r[i]);
            continue;
          }
          if (!std::isfinite(suffix[i])) continue;
          const double bytes_part = (t * (N - m) + (w - t) * N) / load.bytes_per_second;
          best = std::min(best, lambda * r[i] + suffix[i] + (1 - lambda) * bytes_part);
        }
      }
      total += best;
      none_loaded += lambda * static_cast<double>(g.layers.size()) * r[V - 1];
    }
    return std::min(total, none_loaded);
  };
  return MaximizeConcave(dual);
}

// ---- search -------------------------------------------------------------------

namespace {

// A partial plan over layers [0, l] ending with n_l = values[j].
struct Entry {
  double tr = 0;                     // recompute time so far
  double f = 0;                      // load stream finish so far
  double g = 0;                      // worst deadline term max_k (F_k + (L - k) P) so far
  int parent = -1;                   // index into the previous layer's arena
  int j = 0;                         // index of n_l in the value list
  absl::InlinedVector<int, 4> open;  // n_head of pairs open after layer l
};

// `latency`: the load stream's, still to be paid by a partial plan that has
// loaded nothing (f == 0) once it loads.
bool Dominates(const Entry& a, const Entry& b, double eps, double latency) {
  if (a.tr > b.tr + eps || a.f > b.f + eps || a.g > b.g + eps) return false;
  if (a.f == 0 && b.f > 0 && latency > b.f + eps) return false;
  for (size_t i = 0; i < a.open.size(); ++i) {
    if (a.open[i] > b.open[i]) return false;
  }
  return true;
}

class PyramidSearch {
 public:
  PyramidSearch(const RestoreProblem& p, const CostCoefficients& costs, double upper_bound)
      : p_(p),
        costs_(costs),
        L_(p.n_layers),
        N_(p.history_tokens),
        info_(LayerInfos(p.layout, p.n_layers)),
        lb_(PyramidMinimums(p)),
        ub_(upper_bound),
        eps_(std::max(1e-12, p.search_tolerance) * std::max(upper_bound, 1e-12)) {
    prefill_ = costs.compute.LayerSeconds(N_, p.new_tokens);
    const int g = std::max(p.granularity_tokens,
                           (N_ + p.max_grid_points - 2) / std::max(1, p.max_grid_points - 1));
    for (int v = 0; v < N_; v += g) values_.push_back(v);
    values_.push_back(N_);
    for (int v : lb_) values_.push_back(v);
    std::sort(values_.begin(), values_.end());
    values_.erase(std::unique(values_.begin(), values_.end()), values_.end());
    r_.resize(values_.size());
    for (size_t j = 0; j < values_.size(); ++j) r_[j] = costs.compute.LayerSeconds(0, values_[j]);
    // Cheapest possible recompute of layers after l.
    min_future_r_.assign(L_ + 1, 0);
    for (int l = L_ - 1; l >= 0; --l) {
      min_future_r_[l] = min_future_r_[l + 1] + costs.compute.LayerSeconds(0, lb_[l]);
    }
    // Layers after l that load [n, N) for their own n (lone layers and pair
    // heads): how many, and their summed bytes per token.
    future_requests_.assign(L_ + 1, 0);
    future_bytes_per_token_.assign(L_ + 1, 0);
    for (int l = L_ - 1; l >= 0; --l) {
      const bool own = info_[l].role != Role::kPairTail;
      future_requests_[l] = future_requests_[l + 1] + (own ? 1 : 0);
      future_bytes_per_token_[l] =
          future_bytes_per_token_[l + 1] + (own ? info_[l].bytes_per_token : 0);
    }
    // Pairs open after layer l, in pair order.
    open_.resize(L_);
    std::vector<int> current;
    for (int l = 0; l < L_; ++l) {
      if (info_[l].role == Role::kPairTail) {
        current.erase(std::find(current.begin(), current.end(), info_[l].pair));
      }
      if (info_[l].role == Role::kPairHead) {
        current.insert(std::upper_bound(current.begin(), current.end(), info_[l].pair),
                       info_[l].pair);
      }
      open_[l] = current;
      if (info_[l].role == Role::kPairTail) {
        if (static_cast<int>(tail_bytes_.size()) <= info_[l].pair)
          tail_bytes_.resize(info_[l].pair + 1);
        tail_bytes_[info_[l].pair] = info_[l].bytes_per_token;
      }
    }
  }

  // Returns n per layer, or empty when every branch was pruned (the upper
  // bound plan is then optimal).
  std::vector<int> Run(bool& exact) {
    arena_.assign(L_, {});
    std::vector<std::vector<int>> front(values_.size());  // indices into arena_[l]
    // Layer 0.
    for (size_t j = 0; j < values_.size(); ++j) {
      if (values_[j] < lb_[0]) continue;
      Entry e;
      e.j = static_cast<int>(j);
      Extend(nullptr, 0, e);
      if (Pruned(0, e)) continue;
      front[j].push_back(Add(0, std::move(e)));
    }
    for (int l = 0; l + 1 < L_; ++l) {
      // merged[j]: Pareto set of partial plans with n_l >= values[j] — the
      // possible predecessors of n_{l+1} = values[j].
      std::vector<std::vector<int>> merged(values_.size());
      std::vector<int> acc;
      for (int j = static_cast<int>(values_.size()) - 1; j >= 0; --j) {
        std::vector<int> cand = acc;
        cand.insert(cand.end(), front[j].begin(), front[j].end());
        acc = Filter(l, std::move(cand), exact);
        merged[j] = acc;
      }
      std::vector<std::vector<int>> next(values_.size());
      for (size_t j = 0; j < values_.size(); ++j) {
        if (values_[j] < lb_[l + 1] || merged[j].empty()) continue;
        std::vector<int> cand;
        for (int src : merged[j]) {
          Entry e;
          e.j = static_cast<int>(j);
          e.parent = src;
          Extend(&arena_[l][src], l + 1, e);
          if (Pruned(l + 1, e)) continue;
          cand.push_back(Add(l + 1, std::move(e)));
        }
        next[j] = Filter(l + 1, std::move(cand), exact);
      }
      front = std::move(next);
    }
    // Best complete plan.
    int best = -1;
    double best_t = kInf, best_f = kInf;
    for (const auto& fr : front) {
      for (int idx : fr) {
        const Entry& e = arena_[L_ - 1][idx];
        const double t = std::max(e.tr + L_ * prefill_, e.g);
        if (t < best_t - eps_ || (t <= best_t + eps_ && e.f < best_f)) {
          best_t = t;
          best_f = e.f;
          best = idx;
        }
      }
    }
    if (best < 0) return {};
    std::vector<int> n(L_);
    int idx = best;
    for (int l = L_ - 1; l >= 0; --l) {
      const Entry& e = arena_[l][idx];
      n[l] = values_[e.j];
      idx = e.parent;
    }
    return n;
  }

 private:
  // Fills e (whose j is set) as the extension of `prev` (layer l-1) by layer l.
  void Extend(const Entry* prev, int l, Entry& e) {
    const int nl = values_[e.j];
    const LayerInfo& li = info_[l];
    int tokens = 0;
    if (li.role == Role::kPairTail) {
      const auto& prev_open = open_[l - 1];
      const int pos = static_cast<int>(std::find(prev_open.begin(), prev_open.end(), li.pair) -
                                       prev_open.begin());
      tokens = prev->open[pos] - nl;
    } else {
      tokens = N_ - nl;
    }
    e.tr = (prev ? prev->tr : 0) + r_[e.j];
    const double f = prev ? prev->f : 0;
    e.f = f + StreamStepSeconds(costs_.load, tokens * li.bytes_per_token, f > 0);
    e.g = std::max(prev ? prev->g : 0.0, e.f + (L_ - l) * prefill_);
    // Open values in the order of open_[l].
    e.open.clear();
    for (int pair : open_[l]) {
      if (li.role == Role::kPairHead && li.pair == pair) {
        e.open.push_back(nl);
      } else {
        const auto& prev_open = open_[l - 1];
        const size_t pos = std::find(prev_open.begin(), prev_open.end(), pair) - prev_open.begin();
        e.open.push_back(prev->open[pos]);
      }
    }
  }

  // True when no completion of `e` (at layer l) can beat the upper bound.
  // Later layers recompute at most n_l tokens (pyramid), so a later lone
  // layer or pair head loads at least [n_l, N), and the tail of a pair whose
  // head is done loads at least [n_l, n_head).
  bool Pruned(int l, const Entry& e) const {
    const int nl = values_[e.j];
    double future_bytes = 0;
    if (nl < N_ && future_requests_[l + 1] > 0) {
      future_bytes = future_bytes_per_token_[l + 1] * (N_ - nl);
    }
    const std::vector<int>& open = open_[l];
    for (size_t i = 0; i < open.size(); ++i) {
      future_bytes += (e.open[i] - nl) * tail_bytes_[open[i]];
    }
    const double future_load = StreamStepSeconds(costs_.load, future_bytes, e.f > 0);
    const double optimistic =
        std::max({e.tr + min_future_r_[l + 1] + L_ * prefill_, e.g, e.f + future_load + prefill_});
    return optimistic > ub_ + eps_;
  }

  int Add(int l, Entry e) {
    arena_[l].push_back(std::move(e));
    return static_cast<int>(arena_[l].size()) - 1;
  }

  // The non-dominated subset of `cand` (indices into arena_[l]), thinned to
  // max_front_size.
  std::vector<int> Filter(int l, std::vector<int> cand, bool& exact) {
    const auto& a = arena_[l];
    std::sort(cand.begin(), cand.end(), [&](int x, int y) {
      if (a[x].tr != a[y].tr) return a[x].tr < a[y].tr;
      if (a[x].f != a[y].f) return a[x].f < a[y].f;
      if (a[x].g != a[y].g) return a[x].g < a[y].g;
      return x < y;
    });
    std::vector<int> kept;
    for (int c : cand) {
      bool dominated = false;
      for (int k : kept) {
        if (Dominates(a[k], a[c], eps_, costs_.load.latency_s)) {
          dominated = true;
          break;
        }
      }
      if (!dominated) kept.push_back(c);
    }
    const size_t cap = static_cast<size_t>(p_.max_front_size);
    if (kept.size() > cap) {
      exact = false;
      // Evenly spaced along the recompute axis, both ends kept: the
      // trade-off curve stays covered.
      std::vector<int> thin;
      for (size_t i = 0; i < cap; ++i) {
        thin.push_back(kept[cap == 1 ? 0 : i * (kept.size() - 1) / (cap - 1)]);
      }
      thin.erase(std::unique(thin.begin(), thin.end()), thin.end());
      kept = std::move(thin);
    }
    return kept;
  }

  const RestoreProblem& p_;
  const CostCoefficients& costs_;
  const int L_, N_;
  const std::vector<LayerInfo> info_;
  const std::vector<int> lb_;
  const double ub_, eps_;
  double prefill_ = 0;
  std::vector<int> values_;
  std::vector<double> r_;
  std::vector<double> min_future_r_;
  std::vector<int> future_requests_;
  std::vector<double> future_bytes_per_token_;
  std::vector<double> tail_bytes_;  // per pair: bytes per token of its tail
  std::vector<std::vector<int>> open_;
  std::vector<std::vector<Entry>> arena_;
};

// The best split on the grid with every layer at one value v (raised to the
// layers' minimums; with `same_for_all` to the largest minimum, as Cake
// keeps one split across layers).
std::vector<int> BestUniformSplit(const RestoreProblem& p, const CostCoefficients& costs,
                                  bool same_for_all) {
  const int L = p.n_layers, N = p.history_tokens;
  const std::vector<int> lb = PyramidMinimums(p);
  const int g = std::max(p.granularity_tokens,
                         (N + p.max_grid_points - 2) / std::max(1, p.max_grid_points - 1));
  std::vector<int> values;
  for (int v = 0; v < N; v += g) values.push_back(v);
  values.push_back(N);
  std::vector<int> best_n(L, N);
  double best_t = PredictMakespan(p, costs, best_n);
  for (int v : values) {
    std::vector<int> n(L);
    for (int l = 0; l < L; ++l) n[l] = same_for_all ? std::max(v, lb[0]) : std::max(v, lb[l]);
    const double t = PredictMakespan(p, costs, n);
    if (t < best_t) {
      best_t = t;
      best_n = n;
    }
  }
  return best_n;
}

RestorePlan Finish(const RestoreProblem& p, const CostCoefficients& costs, std::vector<int> n,
                   bool exact) {
  RestorePlan plan;
  plan.n_layers = p.n_layers;
  plan.history_tokens = p.history_tokens;
  plan.new_tokens = p.new_tokens;
  plan.policy = p.policy;
  plan.layout = p.layout;
  plan.loads = MakeLoadSteps(p.layout, p.n_layers, p.history_tokens, n);
  plan.stored_begin.assign(p.layout.groups.size(), p.history_tokens);
  for (size_t g = 0; g < p.layout.groups.size(); ++g) {
    for (int l : p.layout.groups[g].layers) {
      plan.stored_begin[g] = std::min(plan.stored_begin[g], n[l]);
    }
  }
  plan.stored_bytes = StoredBytes(p.layout, p.n_layers, p.history_tokens, n);
  plan.predicted_seconds = PredictMakespan(p, costs, n);
  plan.lower_bound_seconds = RestoreLowerBound(p, costs);
  plan.relaxed_lower_bound_seconds = RelaxedRestoreLowerBound(p, costs);
  plan.recompute_tokens = std::move(n);
  plan.exact = exact;
  plan.granularity_tokens = p.granularity_tokens;
  plan.max_grid_points = p.max_grid_points;
  plan.max_front_size = p.max_front_size;
  plan.search_tolerance = p.search_tolerance;
  return plan;
}

}  // namespace

namespace {

// The pyramid bound's inputs: per layer, the recompute seconds of every
// split value; the load stream's seconds per byte and latency; and the
// constant parts of the two streams.
struct DualInputs {
  std::vector<int> values;                     // split values, ascending
  std::vector<std::vector<double>> recompute;  // [layer][value index]
  double seconds_per_byte = 0;
  double latency_s = 0;
  double compute_constant = 0;  // A's part that does not depend on the split
  double load_constant = 0;     // B's part that does not depend on the split
};

// max over lambda of min over pyramids n >= lb of lambda A(n) + (1-lambda) B(n),
// A = sum_l R_l(n_l) + compute_constant, B = latency [anything loaded] +
// bytes(n) * seconds_per_byte + load_constant. Every dual value is a lower
// bound on min over pyramids of max(A, B). A pair's tail loads
// t (n_a - n_b): charged +t n_a at the head and -t n_b at the tail (so each
// layer's cost depends on its own split only). The stream's latency is paid
// iff anything is loaded, i.e. iff the last layer loads (n_{L-1} < N: a
// pyramid recomputes everything above it otherwise). That on/off cost
// would loosen the dual, so the one split that loads nothing (n = N
// everywhere) is evaluated exactly and the dual runs over the splits that
// load (n_{L-1} < N, latency charged). The minimum inside the dual is a
// chain DP over n_l with n_l <= n_{l-1}.
double PyramidDualBound(const RestoreProblem& p, const std::vector<int>& lb, const DualInputs& in) {
  const int L = p.n_layers, N = p.history_tokens;
  const std::vector<LayerInfo> info = LayerInfos(p.layout, L);
  const std::vector<int>& values = in.values;
  const size_t V = values.size();
  std::vector<double> best(V), cost(V);
  auto dual = [&](double lambda) {
    // best[i]: cheapest layers [0, l] with n_l >= values[i] (suffix minimum).
    std::fill(best.begin(), best.end(), 0.0);
    for (int l = 0; l < L; ++l) {
      const LayerInfo& li = info[l];
      const double w = li.bytes_per_token * in.seconds_per_byte;
      double tail = 0;  // per token, charged at a pair's head
      if (li.role == Role::kPairHead) {
        for (const KvGroup& g : p.layout.groups) {
          if (g.layers.size() == 2 && g.layers[0] == l) {
            tail = g.TailBytesPerToken() * in.seconds_per_byte;
          }
        }
      }
      const std::vector<double>& r = in.recompute[l];
      for (size_t i = 0; i < V; ++i) {
        const int n = values[i];
        if (n < lb[l]) {
          cost[i] = kInf;
          continue;
        }
        double ld = 0;
        switch (li.role) {
          case Role::kSingle:
            ld = w * (N - n);
            break;
          case Role::kPairHead:
            ld = w * (N - n) + tail * n;
            break;
          case Role::kPairTail:
            ld = -w * n;
            break;
        }
        if (l == L - 1) {
          if (n == N) {  // loads nothing: evaluated apart, below
            cost[i] = kInf;
            continue;
          }
          ld += in.latency_s;
        }
        cost[i] = lambda * r[i] + (1 - lambda) * ld + best[i];
      }
      // Pyramid: the next layer's n is at most this one's.
      double running = kInf;
      for (size_t i = V; i-- > 0;) {
        running = std::min(running, cost[i]);
        best[i] = running;
      }
    }
    return lambda * in.compute_constant + (1 - lambda) * in.load_constant + best[0];
  };
  const double loading = MaximizeConcave(dual);  // +inf when no split may load
  double none = in.compute_constant;
  for (int l = 0; l < L; ++l) none += in.recompute[l].back();  // values.back() == N
  return std::min(loading, std::max(none, in.load_constant));
}

}  // namespace

double RestoreLowerBound(const RestoreProblem& p, const CostCoefficients& costs) {
  if (!p.Validate().ok()) return 0;
  const int L = p.n_layers, N = p.history_tokens;
  const double prefill = costs.compute.LayerSeconds(N, p.new_tokens);
  if (N == 0) return L * prefill;
  const std::vector<int> lb = PyramidMinimums(p);
  BoundSplits splits = MakeBoundSplits(N, lb, costs.compute);
  DualInputs in;
  in.values = std::move(splits.values);
  in.recompute.assign(L, splits.recompute_s);
  in.seconds_per_byte = 1 / costs.load.bytes_per_second;
  in.latency_s = costs.load.latency_s;
  in.compute_constant = L * prefill;
  in.load_constant = prefill;
  return PyramidDualBound(p, lb, in);
}

double MeasuredRestoreBound(const RestorePlan& executed,
                            const std::vector<int>& min_recompute_tokens,
                            const CostCoefficients& shape, const RestoreMeasurement& m) {
  RestoreProblem p = ProblemOf(executed);
  p.min_recompute_tokens = min_recompute_tokens;
  const int L = p.n_layers, N = p.history_tokens;
  if (!p.Validate().ok() || static_cast<int>(m.recompute_seconds.size()) != L ||
      static_cast<int>(m.prefill_seconds.size()) != L ||
      static_cast<int>(executed.recompute_tokens.size()) != L) {
    return 0;
  }
  double prefill_total = 0;
  for (double s : m.prefill_seconds) prefill_total += s;
  const double compute_constant = prefill_total + m.other_compute_seconds;
  const double load_constant = m.prefill_seconds[L - 1] + m.tail_seconds;
  if (N == 0) return std::max(compute_constant, load_constant);

  // Recompute: each layer's measured time, carried to other splits by the
  // cost model's curve; layers that recomputed nothing use the measured
  // layers' average speed relative to the model (the model itself when no
  // layer recomputed).
  double measured = 0, modelled = 0;
  for (int l = 0; l < L; ++l) {
    const int n = executed.recompute_tokens[l];
    if (n > 0 && m.recompute_seconds[l] > 0) {
      measured += m.recompute_seconds[l];
      modelled += shape.compute.LayerSeconds(0, n);
    }
  }
  const double average_scale = modelled > 0 ? measured / modelled : 1.0;
  const std::vector<int> lb = PyramidMinimums(p);
  // The executed split is among the candidates, so the bound is at most
  // the streams' measured times at that split.
  std::vector<int> must_have = lb;
  must_have.insert(must_have.end(), executed.recompute_tokens.begin(),
                   executed.recompute_tokens.end());
  BoundSplits splits = MakeBoundSplits(N, must_have, shape.compute);
  DualInputs in;
  in.values = std::move(splits.values);
  in.recompute.resize(L);
  for (int l = 0; l < L; ++l) {
    const int n = executed.recompute_tokens[l];
    const double model_n = shape.compute.LayerSeconds(0, n);
    const double scale = n > 0 && model_n > 0 ? m.recompute_seconds[l] / model_n : average_scale;
    in.recompute[l].resize(in.values.size());
    for (size_t i = 0; i < in.values.size(); ++i) {
      in.recompute[l][i] = scale * splits.recompute_s[i];
    }
  }
  // Load: one stream; its measured time less its latency spread over the
  // bytes it brought (a streamed read has no meaningful per-step time: a
  // step that finds its blocks already arrived costs only their decoding).
  double planned = 0;
  for (const LoadStep& step : executed.loads) planned += step.bytes;
  if (planned > 0 && m.load_seconds > 0) {
    in.latency_s = std::clamp(m.load_latency_seconds, 0.0, m.load_seconds);
    in.seconds_per_byte = (m.load_seconds - in.latency_s) / planned;
  } else {
    in.latency_s = shape.load.latency_s;
    in.seconds_per_byte = 1 / shape.load.bytes_per_second;
  }
  in.compute_constant = compute_constant;
  in.load_constant = load_constant;
  return PyramidDualBound(p, lb, in);
}

int64_t RestorePlan::RecomputedTokenLayers() const {
  int64_t total = 0;
  for (int v : recompute_tokens) total += v;
  return total;
}

std::string RestorePlan::DebugString() const {
  return absl::StrCat("N=", history_tokens, " m=", new_tokens, " n=[",
                      absl::StrJoin(recompute_tokens, ","), "] stored_bytes=", stored_bytes,
                      " predicted_s=", predicted_seconds, " lower_bound_s=", lower_bound_seconds,
                      exact ? "" : " (inexact)");
}

absl::StatusOr<RestorePlan> PlanRestore(const RestoreProblem& p, const CostCoefficients& costs) {
  if (auto s = p.Validate(); !s.ok()) return s;
  const int L = p.n_layers, N = p.history_tokens;
  const std::vector<int> lb = PyramidMinimums(p);
  switch (p.policy) {
    case SplitPolicy::kRecomputeAll:
      return Finish(p, costs, std::vector<int>(L, N), true);
    case SplitPolicy::kLoadAll:
      return Finish(p, costs, lb, true);
    case SplitPolicy::kUniform:
    case SplitPolicy::kPyramid:
      break;
  }
  const bool uniform = p.policy == SplitPolicy::kUniform;
  std::vector<int> best_n = BestUniformSplit(p, costs, uniform);
  if (uniform || N == 0) return Finish(p, costs, best_n, true);
  const double best_t = PredictMakespan(p, costs, best_n);
  bool exact = true;
  PyramidSearch search(p, costs, best_t);
  std::vector<int> n = search.Run(exact);
  if (n.empty() || PredictMakespan(p, costs, n) > best_t) n = best_n;
  return Finish(p, costs, std::move(n), exact);
}

RestoreProblem ProblemOf(const RestorePlan& plan) {
  RestoreProblem p;
  p.n_layers = plan.n_layers;
  p.history_tokens = plan.history_tokens;
  p.new_tokens = plan.new_tokens;
  p.layout = plan.layout;
  p.policy = plan.policy;
  p.granularity_tokens = plan.granularity_tokens;
  p.max_grid_points = plan.max_grid_points;
  p.max_front_size = plan.max_front_size;
  p.search_tolerance = plan.search_tolerance;
  return p;
}

absl::StatusOr<RestorePlan> Replan(const RestorePlan& stored, const CostCoefficients& costs) {
  RestoreProblem p = ProblemOf(stored);
  p.min_recompute_tokens = stored.recompute_tokens;
  if (static_cast<int>(stored.recompute_tokens.size()) != stored.n_layers) {
    return absl::InvalidArgumentError("stored plan has no split for every layer");
  }
  for (int l = 0; l + 1 < stored.n_layers; ++l) {
    if (stored.recompute_tokens[l] < stored.recompute_tokens[l + 1]) {
      return absl::InvalidArgumentError("stored plan is not a pyramid");
    }
  }
  return PlanRestore(p, costs);
}

}  // namespace krul
