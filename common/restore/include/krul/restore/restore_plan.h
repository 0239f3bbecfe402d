// The restore planner: which history tokens each layer recomputes and which
// it loads, chosen to minimize the time to the first new token.
//
// A conversation returns with N history tokens and m new input tokens. Layer
// l recomputes tokens [0, n_l) and loads [n_l, N). Recomputing layer l's
// prefix needs layer l-1's output for that prefix, so the split is a
// pyramid: n_0 >= n_1 >= ... >= n_{L-1}. Recomputed tokens are never stored;
// the stored part is exactly what a plan will load.
//
// Storage is described by a KvLayout: every layer belongs to one group, a
// layer stored alone or a shared pair (a, b), a < b (cross-layer
// compression, see compressor.h). A pair stores the tokens both layers load,
// [n_a, N), once (merged), and the tokens only b loads, [n_b, n_a), as b's
// own rows.
//
// Timing model (two streams; the compute stream runs on one device):
//   compute stream: R_0, R_1, ..., R_{L-1}, then P_0, ..., P_{L-1}
//     R_l = recompute of layer l on [0, n_l)       (needs R_{l-1})
//     P_l = new-input prefill of layer l on m tokens at position N
//           (needs P_{l-1} and layer l restored)
//   load stream, in layer order: the tokens layer l needs that no earlier
//     step brought: a single layer loads [n_l, N); a pair's first layer
//     loads [n_a, N) for both layers, its second layer the rest [n_b, n_a).
//     The steps are ONE streamed request (cost_model.h): the stream pays
//     the latency once, when anything is loaded, then bytes / bandwidth per
//     step, so F_l = latency + (bytes of steps <= l) / bandwidth.
//   Layer l is restored when R_l and its load are both done.
// Running every R before any P is optimal for the makespan (one machine,
// the R's are always ready, the P's become ready over time), so
//   makespan = max(T_R + L*P, max_l (F_l + (L - l) * P))
// with T_R = sum of R_l, F_l = finish time of layer l's load, P = P_l.
//
// The planner searches pyramids on a token grid (a dynamic program over
// layers keeping, per (layer, n_l), the Pareto front of partial plans in
// (recompute time, load finish, worst deadline so far, open pairs' n_a),
// pruned by bounds); with search_tolerance 0 and unthinned fronts it is
// exact. Fronts are thinned beyond `max_front_size` (the plan is then marked
// inexact; tests/common/restore/restore_plan_test.cc checks it stays within 1% of
// the exact search, measured gaps are below 0.01%). It also reports an ideal lower bound on any
// pyramid split (at token resolution) if the two streams overlapped perfectly, i.e. on min max(T_R
// + L*P, F_{L-1} + P) with no layer ever waiting for its load: the Lagrangian dual of that problem,
// each dual value a chain DP over the layers; and a looser relaxed bound that drops the pyramid
// too.
//
// All functions are pure and thread-safe.
#ifndef KRUL_RESTORE_RESTORE_PLAN_H_
#define KRUL_RESTORE_RESTORE_PLAN_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/restore/cost_model.h"

namespace krul {

// One stored object family: a layer stored alone or a shared pair.
struct KvGroup {
  std::vector<int> layers;  // ascending; one layer, or two for a shared pair
  // Stored bytes per history token that every layer of the group loads
  // (a pair: merged directions and both layers' norms).
  double bytes_per_token = 0;
  // Pairs: bytes per token that only the second layer loads (stored as that
  // layer's plain rows); 0 means bytes_per_token. Ignored for one layer.
  double tail_bytes_per_token = 0;

  double TailBytesPerToken() const {
    return tail_bytes_per_token > 0 ? tail_bytes_per_token : bytes_per_token;
  }
};

// How a conversation's layers are stored.
struct KvLayout {
  std::vector<KvGroup> groups;

  // OK when every layer in [0, n_layers) is in exactly one group of one or
  // two ascending layers and bytes_per_token is finite and > 0;
  // INVALID_ARGUMENT naming the problem otherwise.
  absl::Status Validate(int n_layers) const;

  // Group index of each layer; call only on a validated layout.
  std::vector<int> GroupOfLayer(int n_layers) const;
};

// Every layer alone at `layer_bytes_per_token`.
KvLayout UncompressedLayout(int n_layers, double layer_bytes_per_token);

// `pairs` (a, b) shared at `pair_bytes_per_token` (tokens both load) and
// `layer_bytes_per_token` (tokens only b loads), every other layer alone at
// `layer_bytes_per_token`. Pairs are normalized to a < b; the layout is
// validated by the planner, not here.
KvLayout PairedLayout(int n_layers, const std::vector<std::pair<int, int>>& pairs,
                      double layer_bytes_per_token, double pair_bytes_per_token);

// Which splits a plan may use (the restore modes differ here).
enum class SplitPolicy {
  kRecomputeAll,  // n_l = N: full prefill of the history
  kLoadAll,       // n_l = 0 (or the stored minimum): load everything
  kUniform,       // one n for every layer, the best on the grid (Cake-style)
  kPyramid,       // any pyramid, the best on the grid (Krul)
};

struct RestoreProblem {
  int n_layers = 0;
  int history_tokens = 0;  // N >= 0
  int new_tokens = 0;      // m >= 0, the new input prefilled after restore
  KvLayout layout;
  SplitPolicy policy = SplitPolicy::kPyramid;
  // Split points are multiples of this (and N itself); coarsened so the grid
  // never has more than `max_grid_points` points.
  int granularity_tokens = 16;
  int max_grid_points = 65;
  // Re-planning at restore time: layer l must recompute at least this many
  // tokens (what was not stored). Empty = no minimum. Must be a pyramid
  // itself (non-increasing) and <= N.
  std::vector<int> min_recompute_tokens;
  // Bound on each Pareto front of the search (see above).
  int max_front_size = 128;
  // Partial plans within this fraction of the upper bound of each other
  // count as equal in the search (keeps fronts small); the plan is then
  // within about n_layers * search_tolerance of the optimum. 0 = exact.
  double search_tolerance = 1e-4;

  // INVALID_ARGUMENT naming the field when something is out of range.
  absl::Status Validate() const;
};

// One request of the load stream.
struct LoadStep {
  int layer = 0;                  // the layer that is restored once this is done
  int group = 0;                  // index into the layout
  int begin = 0, end = 0;         // history tokens [begin, end)
  std::vector<int> write_layers;  // layers of the group whose cache it fills
  double bytes = 0;
};

struct RestorePlan {
  int n_layers = 0;
  int history_tokens = 0;
  int new_tokens = 0;
  SplitPolicy policy = SplitPolicy::kPyramid;
  KvLayout layout;
  std::vector<int> recompute_tokens;  // n_l per layer, a pyramid
  std::vector<LoadStep> loads;        // load-stream order (ascending layer)
  // Per group: stored tokens [stored_begin[g], N).
  std::vector<int> stored_begin;
  double stored_bytes = 0;
  // Under the cost model the plan was made with.
  double predicted_seconds = 0;            // makespan: history restored + new input prefilled
  double lower_bound_seconds = 0;          // ideal, see above
  double relaxed_lower_bound_seconds = 0;  // no pyramid either
  bool exact = true;                       // false if the search thinned a front
  // The search settings, reused by Replan.
  int granularity_tokens = 16;
  int max_grid_points = 65;
  int max_front_size = 128;
  double search_tolerance = 1e-4;

  // Tokens recomputed, summed over layers.
  int64_t RecomputedTokenLayers() const;
  // Human-readable one-liner for logs.
  std::string DebugString() const;
};

// Plans a restore. INVALID_ARGUMENT if the problem does not validate.
absl::StatusOr<RestorePlan> PlanRestore(const RestoreProblem& problem,
                                        const CostCoefficients& costs);

// Re-plans at restore time with fresh costs (e.g. the bandwidth changed):
// the result loads only what `stored` stored, so every n_l can only grow
// (extra tokens are recomputed, none go missing). `policy` is normally the
// stored plan's. INVALID_ARGUMENT if `stored` is inconsistent.
absl::StatusOr<RestorePlan> Replan(const RestorePlan& stored, const CostCoefficients& costs);

// ---- pieces, exposed for the executor, benchmarks and tests ---------------

// The problem `plan` solved (its layout, lengths, policy and search
// settings), without minimums.
RestoreProblem ProblemOf(const RestorePlan& plan);

// The load requests for split `recompute_tokens` (a pyramid) over `layout`.
std::vector<LoadStep> MakeLoadSteps(const KvLayout& layout, int n_layers, int history_tokens,
                                    const std::vector<int>& recompute_tokens);

// Makespan of split `recompute_tokens` under `costs` (see the timing model).
double PredictMakespan(const RestoreProblem& problem, const CostCoefficients& costs,
                       const std::vector<int>& recompute_tokens);

// The ideal lower bound for `problem` (its layout and minimums; policy
// ignored): perfect overlap, any pyramid split. 0 for a problem that does
// not validate.
double RestoreLowerBound(const RestoreProblem& problem, const CostCoefficients& costs);

// What one restore measured, for MeasuredRestoreBound (restorer.cc fills
// it from the compute stream's marks and the load stream's clock).
struct RestoreMeasurement {
  // Per layer: seconds the recompute of [0, n_l) took (0 where n_l = 0).
  std::vector<double> recompute_seconds;
  // Per layer: seconds the new input's prefill took (compute busy, not
  // the wait for the layer's loads).
  std::vector<double> prefill_seconds;
  // Other compute-stream work (the new input's embedding, the logits).
  double other_compute_seconds = 0;
  // Work after the last layer's prefill that also follows the last load
  // (the logits).
  double tail_seconds = 0;
  // The load stream: its busy time (first request to last step landed)
  // and the part of it that was latency (before any byte could arrive).
  double load_seconds = 0;
  double load_latency_seconds = 0;
};

// The true lower bound of one executed restore, from its OWN measured
// costs: the minimum over pyramid splits n (each layer at least
// `min_recompute_tokens`, i.e. what was stored) of max(A(n), B(n)), with
//   A(n) = sum_l R_l(n_l) + sum_l prefill_l + other compute    (compute stream)
//   B(n) = latency [anything loaded] + bytes(n) * s_per_byte
//          + prefill_{L-1} + tail                               (load stream)
// R_l is layer l's measured recompute time carried to other token counts
// along `shape`'s compute curve (layers that recomputed nothing: the
// measured layers' average speed; none: `shape` itself); s_per_byte is the
// measured stream time less its latency over the executed plan's bytes
// (nothing loaded: `shape`'s link). At the executed split A and B are the
// measured busy times of the two streams, each at most the achieved time,
// so bound / achieved <= 1. Computed as the Lagrangian dual of the min-max
// (every dual value is a lower bound). 0 when the inputs do not fit the
// plan.
double MeasuredRestoreBound(const RestorePlan& executed,
                            const std::vector<int>& min_recompute_tokens,
                            const CostCoefficients& shape, const RestoreMeasurement& m);

// The relaxed bound: perfect overlap, any split of any layer (no pyramid),
// at token resolution.
double RelaxedRestoreLowerBound(const RestoreProblem& problem, const CostCoefficients& costs);

// Bytes stored for split `recompute_tokens`: per group, bytes_per_token times
// the tokens all its layers load plus tail_bytes_per_token times the tokens
// only a pair's second layer loads.
double StoredBytes(const KvLayout& layout, int n_layers, int history_tokens,
                   const std::vector<int>& recompute_tokens);

}  // namespace krul

#endif  // KRUL_RESTORE_RESTORE_PLAN_H_
