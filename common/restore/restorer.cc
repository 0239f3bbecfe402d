#include "krul/restore/restorer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "krul/base/status_macros.h"
#include "load_stream.h"

namespace krul {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0, Clock::time_point t1 = Clock::now()) {
  return std::chrono::duration<double>(t1 - t0).count();
}

absl::Status CheckPlan(const RestorePlan& plan, const ModelConfig& config) {
  if (plan.n_layers != config.n_layers ||
      static_cast<int>(plan.recompute_tokens.size()) != config.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan is for ", plan.n_layers, " layers; the model has ", config.n_layers));
  }
  for (int l = 0; l < plan.n_layers; ++l) {
    const int n = plan.recompute_tokens[l];
    if (n < 0 || n > plan.history_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("plan recomputes ", n, " tokens of layer ", l,
                                                     " out of ", plan.history_tokens));
    }
    if (l > 0 && n > plan.recompute_tokens[l - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan is not a pyramid: layer ", l, " recomputes more than layer ", l - 1));
    }
  }
  std::vector<std::vector<std::pair<int, int>>> ranges(plan.n_layers);
  for (size_t i = 0; i < plan.loads.size(); ++i) {
    const LoadStep& s = plan.loads[i];
    if (s.layer < 0 || s.layer >= plan.n_layers || s.begin < 0 || s.end > plan.history_tokens ||
        s.begin >= s.end || s.write_layers.empty() ||
        (i > 0 && plan.loads[i - 1].layer >= s.layer)) {
      return absl::InvalidArgumentError(absl::StrCat("plan load step ", i, " is malformed"));
    }
    bool writes_own_layer = false;
    for (int l : s.write_layers) {
      // A step may fill a later layer early (a shared pair), never an
      // earlier one: that layer may already be in use by the prefill.
      if (l < s.layer || l >= plan.n_layers) {
        return absl::InvalidArgumentError(absl::StrCat("plan load step ", i, " writes layer ", l));
      }
      writes_own_layer |= l == s.layer;
      ranges[l].push_back({s.begin, s.end});
    }
    if (!writes_own_layer) {
      return absl::InvalidArgumentError(absl::StrCat("plan load step ", i, " skips its layer"));
    }
  }
  // Every history token of every layer is recomputed or loaded exactly once:
  // a gap would leave stale KV in the cache, and the result would be wrong
  // without any error.
  for (int l = 0; l < plan.n_layers; ++l) {
    std::sort(ranges[l].begin(), ranges[l].end());
    int covered = plan.recompute_tokens[l];
    for (auto [b, e] : ranges[l]) {
      if (b != covered) break;
      covered = e;
    }
    if (covered != plan.history_tokens ||
        (!ranges[l].empty() && ranges[l].front().first != plan.recompute_tokens[l])) {
      return absl::InvalidArgumentError(absl::StrCat("plan does not restore layer ", l,
                                                     "'s tokens [", plan.recompute_tokens[l], ", ",
                                                     plan.history_tokens, ") exactly once"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

// Marks on the backend's compute queue around each piece of the restore's
// compute work, turned into seconds once the logits are on the host (on a
// device the work runs after the calls that enqueue it return).
struct Restorer::Timeline {
  // One ComputeLayer call: [begin, end) on the compute queue.
  struct Span {
    std::unique_ptr<BackendMark> begin, end;
    int64_t start_pos = 0;
    int64_t num_tokens = 0;
  };
  Clock::time_point start;                     // host: the restore began
  std::unique_ptr<BackendMark> started;        // queue: the restore began
  std::vector<Span> recompute;                 // per recomputed layer
  std::unique_ptr<BackendMark> recomputed;     // every history layer recomputed
  std::unique_ptr<BackendMark> prefill_start;  // before the new input's Embed
  std::unique_ptr<BackendMark> embedded;       // after it
  std::vector<Span> prefill;                   // per layer
  std::unique_ptr<BackendMark> end;            // logits computed
  Clock::time_point logits_on_host;            // host: logits in the caller's span
  LoadStream::Totals loads;
};

Restorer::~Restorer() = default;

absl::StatusOr<std::unique_ptr<Restorer>> Restorer::Create(ComputeBackend& backend,
                                                           const RestorerOptions& options) {
  if (!(options.replan_threshold >= 0)) {
    return absl::InvalidArgumentError("RestorerOptions.replan_threshold must be >= 0");
  }
  return std::unique_ptr<Restorer>(new Restorer(backend, options));
}

absl::Status Restorer::Reserve(std::unique_ptr<ActivationBuffer>& buffer, int rows) {
  if (buffer != nullptr && buffer->rows() >= rows) return absl::OkStatus();
  // Work still enqueued may read the old buffer (a device backend).
  if (buffer != nullptr) KRUL_RETURN_IF_ERROR(backend_.Synchronize());
  buffer.reset();  // free first: lower peak memory
  KRUL_ASSIGN_OR_RETURN(buffer, backend_.CreateActivations(rows));
  return absl::OkStatus();
}

absl::StatusOr<RestoreStats> Restorer::Restore(const RestorePlan& stored_plan,
                                               std::span<const int> history,
                                               std::span<const int> new_input, KvSource* source,
                                               BackendKvCache& cache, std::span<float> logits,
                                               AttentionObserver* new_input_observer) {
  KRUL_RETURN_IF_ERROR(CheckRequest(stored_plan, history, new_input, cache, logits));
  Timeline timeline;
  timeline.start = Clock::now();
  KRUL_ASSIGN_OR_RETURN(timeline.started, backend_.RecordMark());
  KRUL_ASSIGN_OR_RETURN(RestoreStats stats,
                        ReplanIfCostsMoved(stored_plan, static_cast<int>(new_input.size())));
  stats.replan_seconds = Since(timeline.start);
  const RestorePlan& plan = stats.plan;
  if (!plan.loads.empty() && source == nullptr) {
    return absl::InvalidArgumentError("the plan loads KV but no source was given");
  }
  // Whatever happens below, the load thread is stopped and joined before
  // the cache goes out of reach (LoadStream's destructor).
  LoadStream loads(plan, source, cache, timeline.start);
  KRUL_RETURN_IF_ERROR(RecomputeHistory(plan, history, cache, timeline));
  if (new_input_observer != nullptr) {
    KRUL_RETURN_IF_ERROR(backend_.SetAttentionObserver(new_input_observer));
  }
  absl::Status prefilled = PrefillAsLayersRestore(plan, new_input, cache, loads, logits, timeline);
  if (new_input_observer != nullptr) {
    // Delivers the observer's pending blocks; the first error wins.
    absl::Status cleared = backend_.SetAttentionObserver(nullptr);
    if (prefilled.ok()) prefilled = std::move(cleared);
  }
  KRUL_RETURN_IF_ERROR(prefilled);
  timeline.loads = loads.Join();  // finished: every layer's loads were awaited
  KRUL_RETURN_IF_ERROR(FinishStats(stored_plan, timeline, stats));
  return stats;
}

absl::Status Restorer::CheckRequest(const RestorePlan& plan, std::span<const int> history,
                                    std::span<const int> new_input, const BackendKvCache& cache,
                                    std::span<float> logits) const {
  const ModelConfig& config = backend_.config();
  KRUL_RETURN_IF_ERROR(CheckPlan(plan, config));
  const int N = plan.history_tokens;
  const int m = static_cast<int>(new_input.size());
  if (static_cast<int>(history.size()) != N) {
    return absl::InvalidArgumentError(
        absl::StrCat("history has ", history.size(), " tokens; the plan is for ", N));
  }
  if (m < 1) return absl::InvalidArgumentError("restore needs at least one new input token");
  if (cache.n_layers() != config.n_layers || cache.kv_dim() != config.kv_dim() ||
      cache.capacity() < N + m) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache (layers=", cache.n_layers(), ", kv_dim=", cache.kv_dim(),
        ", capacity=", cache.capacity(), ") cannot hold ", N + m, " tokens of this model"));
  }
  if (logits.size() != static_cast<size_t>(config.vocab_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("logits span holds ", logits.size(), " floats; expected ", config.vocab_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<RestoreStats> Restorer::ReplanIfCostsMoved(const RestorePlan& stored_plan,
                                                          int new_tokens) const {
  RestoreStats stats;
  stats.plan = stored_plan;
  // The plan was made for the expected input length; this is the real one.
  stats.plan.new_tokens = new_tokens;
  if (options_.cost_model == nullptr) return stats;
  const CostCoefficients costs_now = options_.cost_model->Snapshot();
  const double predicted =
      PredictMakespan(ProblemOf(stats.plan), costs_now, stored_plan.recompute_tokens);
  if (std::abs(predicted - stored_plan.predicted_seconds) >
      options_.replan_threshold * stored_plan.predicted_seconds) {
    KRUL_ASSIGN_OR_RETURN(stats.plan, Replan(stats.plan, costs_now));
    stats.replanned = true;
  } else {
    stats.plan.predicted_seconds = predicted;
  }
  return stats;
}

absl::Status Restorer::RecomputeHistory(const RestorePlan& plan, std::span<const int> history,
                                        BackendKvCache& cache, Timeline& timeline) {
  const int N = plan.history_tokens;
  const int n0 = N > 0 ? plan.recompute_tokens[0] : 0;
  if (n0 > 0) {
    KRUL_RETURN_IF_ERROR(Reserve(hidden_, n0));
    KRUL_RETURN_IF_ERROR(backend_.Embed(history.subspan(0, n0), hidden_->data()));
  }
  for (int l = 0; l < plan.n_layers && N > 0; ++l) {
    const int n = plan.recompute_tokens[l];
    if (n == 0) break;  // a pyramid: no later layer recomputes either
    Timeline::Span span;
    span.start_pos = 0;
    span.num_tokens = n;
    KRUL_ASSIGN_OR_RETURN(span.begin, backend_.RecordMark());
    // Rows [0, n) of hidden_ are layer l-1's output for tokens [0, n):
    // layer l-1 computed n_{l-1} >= n rows.
    KRUL_RETURN_IF_ERROR(backend_.ComputeLayer(l, cache, 0, n, hidden_->data()));
    KRUL_ASSIGN_OR_RETURN(span.end, backend_.RecordMark());
    timeline.recompute.push_back(std::move(span));
  }
  KRUL_ASSIGN_OR_RETURN(timeline.recomputed, backend_.RecordMark());
  return absl::OkStatus();
}

absl::Status Restorer::PrefillAsLayersRestore(const RestorePlan& plan,
                                              std::span<const int> new_input, BackendKvCache& cache,
                                              LoadStream& loads, std::span<float> logits,
                                              Timeline& timeline) {
  const int N = plan.history_tokens;
  const int m = static_cast<int>(new_input.size());
  const int dim = backend_.config().dim;
  KRUL_ASSIGN_OR_RETURN(timeline.prefill_start, backend_.RecordMark());
  KRUL_RETURN_IF_ERROR(Reserve(input_, m));
  KRUL_RETURN_IF_ERROR(backend_.Embed(new_input, input_->data()));
  KRUL_ASSIGN_OR_RETURN(timeline.embedded, backend_.RecordMark());
  for (int l = 0; l < plan.n_layers; ++l) {
    // Layer l's history is in the cache once its load steps are done (the
    // host waits here) and their writes are ordered before this layer's
    // compute (the device waits, on CUDA).
    KRUL_RETURN_IF_ERROR(loads.WaitForLayer(l));
    KRUL_RETURN_IF_ERROR(backend_.AwaitWrites(cache, l));
    Timeline::Span span;
    span.start_pos = N;
    span.num_tokens = m;
    KRUL_ASSIGN_OR_RETURN(span.begin, backend_.RecordMark());
    KRUL_RETURN_IF_ERROR(backend_.ComputeLayer(l, cache, N, m, input_->data()));
    KRUL_ASSIGN_OR_RETURN(span.end, backend_.RecordMark());
    timeline.prefill.push_back(std::move(span));
  }
  KRUL_RETURN_IF_ERROR(
      backend_.ComputeLogits(input_->data() + static_cast<size_t>(m - 1) * dim, 1, logits));
  KRUL_ASSIGN_OR_RETURN(timeline.end, backend_.RecordMark());
  timeline.logits_on_host = Clock::now();
  return absl::OkStatus();
}

absl::Status Restorer::FinishStats(const RestorePlan& stored_plan, Timeline& timeline,
                                   RestoreStats& stats) {
  const RestorePlan& plan = stats.plan;
  const int L = plan.n_layers;
  CostModel* cost_model = options_.cost_model;
  // The curve the measured layer times are carried along, as the plan saw it.
  const CostCoefficients shape =
      cost_model != nullptr ? cost_model->Snapshot() : CostCoefficients{};
  auto seconds = [&](const BackendMark& from, const BackendMark& to) {
    return backend_.SecondsBetween(from, to);
  };
  RestoreMeasurement measured;
  measured.recompute_seconds.assign(L, 0);
  measured.prefill_seconds.assign(L, 0);
  // Compute stream: each layer's time, fed to the cost model (live refresh).
  for (size_t l = 0; l < timeline.recompute.size(); ++l) {
    const Timeline::Span& span = timeline.recompute[l];
    KRUL_ASSIGN_OR_RETURN(const double s, seconds(*span.begin, *span.end));
    measured.recompute_seconds[l] = s;
    stats.recompute_seconds += s;
    stats.recomputed_token_layers += span.num_tokens;
    if (cost_model != nullptr) cost_model->ObserveCompute(span.start_pos, span.num_tokens, s);
  }
  const BackendMark* previous = timeline.embedded.get();
  for (size_t l = 0; l < timeline.prefill.size(); ++l) {
    const Timeline::Span& span = timeline.prefill[l];
    KRUL_ASSIGN_OR_RETURN(const double wait, seconds(*previous, *span.begin));
    KRUL_ASSIGN_OR_RETURN(const double s, seconds(*span.begin, *span.end));
    measured.prefill_seconds[l] = s;
    stats.prefill_wait_seconds += wait;
    if (cost_model != nullptr) cost_model->ObserveCompute(span.start_pos, span.num_tokens, s);
    previous = span.end.get();
  }
  KRUL_ASSIGN_OR_RETURN(const double embed, seconds(*timeline.prefill_start, *timeline.embedded));
  KRUL_ASSIGN_OR_RETURN(const double logits, seconds(*previous, *timeline.end));
  KRUL_ASSIGN_OR_RETURN(const double recomputed, seconds(*timeline.started, *timeline.recomputed));
  KRUL_ASSIGN_OR_RETURN(stats.prefill_seconds, seconds(*timeline.prefill_start, *timeline.end));
  measured.other_compute_seconds = embed + logits;
  measured.tail_seconds = logits;

  // Load stream and the whole restore, on the host clock.
  const LoadStream::Totals& loads = timeline.loads;
  stats.total_seconds = Since(timeline.start, timeline.logits_on_host);
  stats.restore_seconds = std::max(recomputed, Since(timeline.start, loads.finished));
  stats.load_seconds = loads.busy_seconds;
  stats.loaded_bytes = loads.bytes;
  stats.load_requests = loads.requests;
  measured.load_seconds = loads.busy_seconds;
  // The share of the stream that was latency is not observable inside one
  // stream (a transport may deliver every block at its end): the model's,
  // fitted over restores of different sizes, capped by the first step.
  measured.load_latency_seconds = std::min(loads.first_seconds, shape.load.latency_s);
  stats.load_latency_seconds = measured.load_latency_seconds;
  if (cost_model != nullptr && loads.requests > 0) {
    LoadStreamSample sample;
    sample.bytes = static_cast<double>(loads.bytes);
    sample.seconds = loads.busy_seconds;
    cost_model->ObserveLoadStream(sample);
  }

  // The true bound: this restore's own measured costs, best split of what
  // was stored (the stored split is the least each layer recomputes).
  stats.lower_bound_seconds =
      MeasuredRestoreBound(plan, stored_plan.recompute_tokens, shape, measured);
  stats.plan.lower_bound_seconds = stats.lower_bound_seconds;
  if (cost_model != nullptr) {
    RestoreProblem executed = ProblemOf(plan);
    executed.min_recompute_tokens = stored_plan.recompute_tokens;
    stats.plan.relaxed_lower_bound_seconds =
        RelaxedRestoreLowerBound(executed, cost_model->Snapshot());
  }
  stats.efficiency = stats.total_seconds > 0 ? stats.lower_bound_seconds / stats.total_seconds : 0;
  // The two streams' own work at the executed split (the bound's A and B
  // there): how well they overlapped, whatever the split.
  const double prefill_busy = stats.prefill_seconds - stats.prefill_wait_seconds;
  const double overlapped =
      std::max(stats.recompute_seconds + prefill_busy,
               stats.load_seconds + measured.prefill_seconds[L - 1] + measured.tail_seconds);
  stats.stream_efficiency = stats.total_seconds > 0 ? overlapped / stats.total_seconds : 0;
  return absl::OkStatus();
}

}  // namespace krul
