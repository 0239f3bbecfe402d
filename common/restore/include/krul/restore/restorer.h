// The restore executor: brings a returning conversation's KV back according
// to a RestorePlan and prefills the new input, with two concurrent streams,
// on any compute backend (backend.h: the CPU engine or the CUDA engine).
//
//   recompute stream (the calling thread, driving the backend):
//     hidden = Embed(history[0, n_0))
//     for l: ComputeLayer(l, [0, n_l), hidden)   -- rows [0, n_l) of hidden
//            hold layer l-1's output for exactly those tokens, because the
//            plan is a pyramid (n_{l-1} >= n_l)
//     x = Embed(new input)
//     for l: wait until layer l's loads are done; AwaitWrites(cache, l);
//            ComputeLayer(l, [N, N+m), x)
//     logits = ComputeLogits(last row of x)
//   load stream (a thread owned by the call): the plan's LoadSteps in order,
//     each a KvSource::Fetch into the cache, then cache.WaitForWrites().
//
// On the CPU every step computes when called; on CUDA the recompute and the
// prefill are enqueued on the device, the loads land through the cache's
// transfer stream, and AwaitWrites orders them before the prefill of their
// layer, so neither stream waits for the other more than the plan says.
//
// Before executing, the plan is re-planned with the cost model's current
// coefficients when they moved its prediction by more than
// `replan_threshold` (Replan only adds recompute, so nothing the store lacks
// is ever requested). Layer compute times are taken between backend marks
// (the wall clock on the CPU, device events on CUDA) and, with the load
// stream's time (one sample per restore: the stream is one request), fed
// back to the cost model (live refresh) once the logits are in.
//
// Efficiency = the true lower bound / the achieved time, the bound computed
// from this restore's OWN measured per-layer recompute times and load
// stream (MeasuredRestoreBound, restore_plan.h: the best split of what was
// stored under those costs, with the two streams perfectly overlapped). It
// never exceeds 1; 1 means no split and no schedule could have been faster
// on the costs this restore met.
//
// Thread safety: a Restorer drives one backend and is not thread-safe; run
// one per backend.
#ifndef KRUL_RESTORE_RESTORER_H_
#define KRUL_RESTORE_RESTORER_H_

#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/engine/backend.h"
#include "krul/restore/cost_model.h"
#include "krul/restore/kv_source.h"
#include "krul/restore/restore_plan.h"

namespace krul {

class LoadStream;  // the load thread of one restore (common/restore/load_stream.h)

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
  double replan_seconds = 0;        // deciding whether to re-plan, and re-planning
  double total_seconds = 0;         // start to logits of the last new token on the host
  double restore_seconds = 0;       // start to every layer's history restored
  double recompute_seconds = 0;     // compute stream busy on history layers
  double prefill_seconds = 0;       // new-input prefill (+ logits), compute stream
  double prefill_wait_seconds = 0;  // compute stream idle during the prefill (bubbles)
  double load_seconds = 0;          // load stream busy (fetch + writes landed)
  double load_latency_seconds = 0;  // of which before its first bytes (estimated)
  size_t loaded_bytes = 0;
  int load_requests = 0;  // load steps (one streamed request in all)
  int64_t recomputed_token_layers = 0;
  // The true lower bound (see above) and lower bound / total_seconds.
  double lower_bound_seconds = 0;
  double efficiency = 0;
  // Against this run's own stream work at the executed split (the split
  // itself not questioned): max(compute busy, load busy + the last layer's
  // prefill and the logits) / total_seconds, i.e. how well the two streams
  // overlapped. At most 1, and at least efficiency.
  double stream_efficiency = 0;
};

class Restorer {
 public:
  // Drives `backend` (borrowed; must outlive the restorer). INVALID_ARGUMENT
  // if the options are out of range.
  static absl::StatusOr<std::unique_ptr<Restorer>> Create(ComputeBackend& backend,
                                                          const RestorerOptions& options = {});
  ~Restorer();

  // Restores `history` (N = plan.history_tokens tokens) into `cache` (one of
  // the backend's) per `plan` (loading from `source`, which may be null when
  // the plan loads nothing), then prefills `new_input` at positions
  // [N, N + m) and writes the last new token's logits (vocab_size floats,
  // host) into `logits`. The backend should have no attention observer;
  // `new_input_observer` (optional, borrowed) observes the new input's
  // prefill only (the similarity estimator sees what a turn adds, never the
  // recomputed history) and is cleared before returning.
  // INVALID_ARGUMENT: history length != plan.history_tokens, empty new
  // input, a plan that is not a pyramid, does not restore every history
  // token of every layer exactly once or does not match the model, a cache
  // too small or of the wrong shape (e.g. a tensor-parallel rank's), a
  // logits span of the wrong size, or loads without a source. Fetch errors
  // (UNAVAILABLE, DATA_LOSS, ...) and backend errors are passed through; the
  // cache is then partly written and must not be used (recompute instead).
  absl::StatusOr<RestoreStats> Restore(const RestorePlan& plan, std::span<const int> history,
                                       std::span<const int> new_input, KvSource* source,
                                       BackendKvCache& cache, std::span<float> logits,
                                       AttentionObserver* new_input_observer = nullptr);

 private:
  struct Timeline;  // marks around the compute stream's work (restorer.cc)

  Restorer(ComputeBackend& backend, const RestorerOptions& options)
      : backend_(backend), options_(options) {}

  // The steps of Restore, in order.
  absl::Status CheckRequest(const RestorePlan& plan, std::span<const int> history,
                            std::span<const int> new_input, const BackendKvCache& cache,
                            std::span<float> logits) const;
  absl::StatusOr<RestoreStats> ReplanIfCostsMoved(const RestorePlan& stored_plan,
                                                  int new_tokens) const;
  absl::Status RecomputeHistory(const RestorePlan& plan, std::span<const int> history,
                                BackendKvCache& cache, Timeline& timeline);
  absl::Status PrefillAsLayersRestore(const RestorePlan& plan, std::span<const int> new_input,
                                      BackendKvCache& cache, LoadStream& loads,
                                      std::span<float> logits, Timeline& timeline);
  absl::Status FinishStats(const RestorePlan& stored_plan, Timeline& timeline, RestoreStats& stats);

  // Activations of at least `rows` rows in `buffer`.
  absl::Status Reserve(std::unique_ptr<ActivationBuffer>& buffer, int rows);

  ComputeBackend& backend_;
  const RestorerOptions options_;
  std::unique_ptr<ActivationBuffer> hidden_;  // (n_0, dim) history residual stream
  std::unique_ptr<ActivationBuffer> input_;   // (m, dim) new-input residual stream
};

}  // namespace krul

#endif  // KRUL_RESTORE_RESTORER_H_
