#include "krul/restore/restorer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace krul {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0, Clock::time_point t1 = Clock::now()) {
  return std::chrono::duration<double>(t1 - t0).count();
}

// Progress of the load stream, shared with the recompute stream.
struct LoadProgress {
  absl::Mutex mu;
  // Every load step of layers <= loaded_through is done.
  int loaded_through ABSL_GUARDED_BY(mu) = -1;
  absl::Status error ABSL_GUARDED_BY(mu);
  bool cancelled ABSL_GUARDED_BY(mu) = false;
  // Written by the load thread only; read after join.
  double busy_seconds = 0;
  size_t bytes = 0;
  int requests = 0;
  Clock::time_point finished;
};

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

absl::StatusOr<std::unique_ptr<Restorer>> Restorer::Create(Engine& engine,
                                                           const RestorerOptions& options) {
  if (!(options.replan_threshold >= 0)) {
    return absl::InvalidArgumentError("RestorerOptions.replan_threshold must be >= 0");
  }
  return std::unique_ptr<Restorer>(new Restorer(engine, options));
}

absl::StatusOr<RestoreStats> Restorer::Restore(const RestorePlan& stored_plan,
                                               std::span<const int> history,
                                               std::span<const int> new_input, KvSource* source,
                                               KvCache& cache, std::span<float> logits) {
  const ModelConfig& config = engine_.config();
  if (auto s = CheckPlan(stored_plan, config); !s.ok()) return s;
  const int N = stored_plan.history_tokens;
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

  RestoreStats stats;
  stats.plan = stored_plan;
  // The plan was made for the expected input length; this is the real one.
  stats.plan.new_tokens = m;
  CostCoefficients costs_now;
  const auto start = Clock::now();
  if (options_.cost_model != nullptr) {
    costs_now = options_.cost_model->Snapshot();
    const double predicted =
        PredictMakespan(ProblemOf(stats.plan), costs_now, stored_plan.recompute_tokens);
    if (std::abs(predicted - stored_plan.predicted_seconds) >
        options_.replan_threshold * stored_plan.predicted_seconds) {
      auto replanned = Replan(stats.plan, costs_now);
      if (!replanned.ok()) return replanned.status();
      stats.plan = *std::move(replanned);
      stats.replanned = true;
    } else {
      stats.plan.predicted_seconds = predicted;
    }
  }
  const RestorePlan& plan = stats.plan;
  if (!plan.loads.empty() && source == nullptr) {
    return absl::InvalidArgumentError("the plan loads KV but no source was given");
  }

  // ---- load stream ----
  LoadProgress progress;
  {
    absl::MutexLock lock(&progress.mu);
    progress.loaded_through = plan.loads.empty() ? config.n_layers - 1 : plan.loads[0].layer - 1;
  }
  progress.finished = start;
  CostModel* cost_model = options_.cost_model;
  std::thread loader([&] {
    for (size_t i = 0; i < plan.loads.size(); ++i) {
      const LoadStep& step = plan.loads[i];
      {
        absl::MutexLock lock(&progress.mu);
        if (progress.cancelled) return;
      }
      const auto t0 = Clock::now();
      absl::StatusOr<size_t> bytes = source->Fetch(step.write_layers, step.begin, step.end, cache);
      const double seconds = Since(t0);
      if (!bytes.ok()) {
        absl::MutexLock lock(&progress.mu);
        progress.error = bytes.status();
        return;
      }
      progress.busy_seconds += seconds;
      progress.bytes += *bytes;
      progress.requests++;
      progress.finished = Clock::now();
      if (cost_model != nullptr) cost_model->ObserveLoad(*bytes, seconds);
      absl::MutexLock lock(&progress.mu);
      progress.loaded_through =
          i + 1 < plan.loads.size() ? plan.loads[i + 1].layer - 1 : config.n_layers - 1;
    }
  });
  // Whatever happens below, the load thread is stopped and joined before the
  // cache (and `progress`) go out of reach.
  struct Joiner {
    LoadProgress& progress;
    std::thread& thread;
    ~Joiner() {
      {
        absl::MutexLock lock(&progress.mu);
        progress.cancelled = true;
      }
      if (thread.joinable()) thread.join();
    }
  } joiner{progress, loader};

  // ---- recompute stream ----
  const int dim = config.dim;
  const int n0 = N > 0 ? plan.recompute_tokens[0] : 0;
  if (hidden_.size() < static_cast<size_t>(n0) * dim) hidden_.Resize(static_cast<size_t>(n0) * dim);
  if (n0 > 0) {
    if (auto s = engine_.Embed(history.subspan(0, n0), hidden_.data()); !s.ok()) return s;
  }
  for (int l = 0; l < config.n_layers && N > 0; ++l) {
    const int n = plan.recompute_tokens[l];
    if (n == 0) break;  // a pyramid: no later layer recomputes either
    const auto t0 = Clock::now();
    // Rows [0, n) of hidden_ are layer l-1's output for tokens [0, n):
    // layer l-1 computed n_{l-1} >= n rows.
    if (auto s = engine_.ComputeLayer(l, cache, 0, n, hidden_.data()); !s.ok()) return s;
    const double seconds = Since(t0);
    stats.recompute_seconds += seconds;
    stats.recomputed_token_layers += n;
    if (cost_model != nullptr) cost_model->ObserveCompute(0, n, seconds);
  }
  const auto recompute_done = Clock::now();

  // ---- new-input prefill, layer by layer as layers become restored ----
  const auto prefill_start = Clock::now();
  if (input_.size() < static_cast<size_t>(m) * dim) input_.Resize(static_cast<size_t>(m) * dim);
  if (auto s = engine_.Embed(new_input, input_.data()); !s.ok()) return s;
  for (int l = 0; l < config.n_layers; ++l) {
    const auto wait_start = Clock::now();
    {
      absl::MutexLock lock(&progress.mu);
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(progress.mu) {
        return progress.loaded_through >= l || !progress.error.ok();
      };
      progress.mu.Await(absl::Condition(&ready));
      if (!progress.error.ok()) return progress.error;
    }
    stats.prefill_wait_seconds += Since(wait_start);
    const auto t0 = Clock::now();
    if (auto s = engine_.ComputeLayer(l, cache, N, m, input_.data()); !s.ok()) return s;
    if (cost_model != nullptr) cost_model->ObserveCompute(N, m, Since(t0));
  }
  engine_.ComputeLogits(input_.data() + static_cast<size_t>(m - 1) * dim, logits.data());
  const auto end = Clock::now();

  loader.join();  // finished: every layer's loads were awaited above
  stats.total_seconds = Since(start, end);
  stats.prefill_seconds = Since(prefill_start, end);
  stats.restore_seconds = Since(start, std::max(recompute_done, progress.finished));
  stats.load_seconds = progress.busy_seconds;
  stats.loaded_bytes = progress.bytes;
  stats.load_requests = progress.requests;
  // The ideal is judged under the costs as refreshed by this restore's own
  // measurements (so a stale probe does not count as a scheduling loss), for
  // what was stored (the stored split is the least each layer recomputes).
  if (cost_model != nullptr) {
    const CostCoefficients measured = cost_model->Snapshot();
    RestoreProblem executed = ProblemOf(plan);
    executed.min_recompute_tokens = stored_plan.recompute_tokens;
    stats.plan.lower_bound_seconds = RestoreLowerBound(executed, measured);
    stats.plan.relaxed_lower_bound_seconds = RelaxedRestoreLowerBound(executed, measured);
  }
  stats.efficiency =
      stats.total_seconds > 0 ? stats.plan.lower_bound_seconds / stats.total_seconds : 0;
  const double prefill_busy = stats.prefill_seconds - stats.prefill_wait_seconds;
  const double overlapped = std::max(stats.recompute_seconds + prefill_busy,
                                     stats.load_seconds + prefill_busy / config.n_layers);
  stats.stream_efficiency = stats.total_seconds > 0 ? overlapped / stats.total_seconds : 0;
  return stats;
}

}  // namespace krul
