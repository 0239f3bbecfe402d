// The restore executor: brings a returning conversation's KV back according
// to a RestorePlan and prefills the new input, with two concurrent streams.
//
//   recompute stream (the calling thread, driving the Engine):
//     hidden = Embed(history[0, n_0))
//     for l: ComputeLayer(l, [0, n_l), hidden)   -- rows [0, n_l) of hidden
//            hold layer l-1's output for exactly those tokens, because the
//            plan is a pyramid (n_{l-1} >= n_l)
//     x = Embed(new input)
//     for l: wait until layer l's loads are done; ComputeLayer(l, [N, N+m), x)
//     logits = ComputeLogits(last row of x)
//   load stream (a thread owned by the call): the plan's LoadSteps in order,
//     each a KvSource::Fetch into the cache.
//
// Before executing, the plan is re-planned with the cost model's current
// coefficients when they moved its prediction by more than
// `replan_threshold` (Replan only adds recompute, so nothing the store lacks
// is ever requested). Measured layer and fetch times are fed back to the cost
// model (live refresh).
//
// Efficiency = the ideal lower bound / the achieved time, the bound taken
// under the cost model as refreshed by this restore's own measurements (with
// no cost model: the plan's own bound).
//
// Thread safety: a Restorer drives one Engine and is not thread-safe; run
// one per engine.
#ifndef KRUL_RESTORE_RESTORER_H_
#define KRUL_RESTORE_RESTORER_H_

#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/aligned_buffer.h"
#include "krul/restore/cost_model.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/restore/kv_source.h"
#include "krul/restore/restore_plan.h"

namespace krul {

struct RestorerOptions {
  // Receives live measurements and provides the coefficients for
  // re-planning. Not owned; nullptr = execute the plan as given.
  CostModel* cost_model = nullptr;
  // Re-plan when the stored plan's predicted time under the current costs
  // differs from its stored prediction by more than this fraction.
  double replan_threshold = 0.05;
};

struct RestoreStats {
  RestorePlan plan;  // the plan executed (after any re-plan)
  bool replanned = false;
  double total_seconds = 0;         // start to logits of the last new token
  double restore_seconds = 0;       // start to every layer's history restored
  double recompute_seconds = 0;     // recompute stream busy on history
  double prefill_seconds = 0;       // new-input prefill (+ logits)
  double prefill_wait_seconds = 0;  // prefill waiting for loads (bubbles)
  double load_seconds = 0;          // load stream busy
  size_t loaded_bytes = 0;
  int load_requests = 0;
  int64_t recomputed_token_layers = 0;
  // lower bound / total_seconds (see above).
  double efficiency = 0;
  // The same against this run's own stream work, independent of the cost
  // model: max(compute busy, load busy + one layer's prefill) /
  // total_seconds, i.e. how well the two streams overlapped.
  double stream_efficiency = 0;
};

class Restorer {
 public:
  // INVALID_ARGUMENT if the options are out of range.
  static absl::StatusOr<std::unique_ptr<Restorer>> Create(Engine& engine,
                                                          const RestorerOptions& options = {});

  // Restores `history` (N = plan.history_tokens tokens) into `cache` per
  // `plan` (loading from `source`, which may be null when the plan loads
  // nothing), then prefills `new_input` at positions [N, N + m) and writes
  // the last new token's logits (vocab_size floats) into `logits`.
  // INVALID_ARGUMENT: history length != plan.history_tokens, empty new
  // input, a plan that is not a pyramid or does not match the model, a
  // cache too small or of the wrong shape, a logits span of the wrong size,
  // or loads without a source. Fetch errors (UNAVAILABLE, DATA_LOSS, ...) and
  // engine errors are passed through; the cache is then partly written and
  // must not be used (recompute instead).
  absl::StatusOr<RestoreStats> Restore(const RestorePlan& plan, std::span<const int> history,
                                       std::span<const int> new_input, KvSource* source,
                                       KvCache& cache, std::span<float> logits);

 private:
  Restorer(Engine& engine, const RestorerOptions& options) : engine_(engine), options_(options) {}

  Engine& engine_;
  const RestorerOptions options_;
  AlignedBuffer<float> hidden_;  // (n_0, dim) history residual stream
  AlignedBuffer<float> input_;   // (m, dim) new-input residual stream
};

}  // namespace krul

#endif  // KRUL_RESTORE_RESTORER_H_
