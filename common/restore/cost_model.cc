#include "krul/restore/cost_model.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <span>

#include "absl/strings/str_cat.h"
#include "krul/base/status_macros.h"

namespace krul {
namespace {

using Clock = std::chrono::steady_clock;

absl::Status CheckCoefficients(const CostCoefficients& c) {
  const ComputeCoefficients& k = c.compute;
  if (!(k.fixed_s >= 0) || !(k.per_token_s >= 0) || !(k.per_attention_pair_s >= 0)) {
    return absl::InvalidArgumentError("compute coefficients must be finite and >= 0");
  }
  if (!(c.load.latency_s >= 0) || !(c.load.bytes_per_second > 0) ||
      !std::isfinite(c.load.bytes_per_second) || !std::isfinite(c.load.latency_s)) {
    return absl::InvalidArgumentError(
        "load latency_s must be >= 0 and bytes_per_second finite and > 0");
  }
  return absl::OkStatus();
}

// Solves the k x k system a x = b in place (Gaussian elimination with partial
// pivoting). False when the matrix is (numerically) singular.
template <size_t N>
bool Solve(std::array<std::array<double, N>, N> a, std::array<double, N> b, int k,
           std::array<double, N>& x) {
  for (int col = 0; col < k; ++col) {
    int pivot = col;
    for (int r = col + 1; r < k; ++r) {
      if (std::abs(a[r][col]) > std::abs(a[pivot][col])) pivot = r;
    }
    if (std::abs(a[pivot][col]) < 1e-12) return false;
    std::swap(a[col], a[pivot]);
    std::swap(b[col], b[pivot]);
    for (int r = col + 1; r < k; ++r) {
      const double f = a[r][col] / a[col][col];
      for (int c = col; c < k; ++c) a[r][c] -= f * a[col][c];
      b[r] -= f * b[col];
    }
  }
  for (int r = k - 1; r >= 0; --r) {
    double s = b[r];
    for (int c = r + 1; c < k; ++c) s -= a[r][c] * x[c];
    x[r] = s / a[r][r];
  }
  return true;
}

double Fastest(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

}  // namespace

double AttentionPairs(int64_t start_pos, int64_t num_tokens) {
  if (num_tokens <= 0) return 0;
  const double n = static_cast<double>(num_tokens);
  return n * static_cast<double>(start_pos) + n * (n + 1) / 2;
}

double ComputeCoefficients::LayerSeconds(int64_t start_pos, int64_t num_tokens) const {
  if (num_tokens <= 0) return 0;
  return fixed_s + per_token_s * static_cast<double>(num_tokens) +
         per_attention_pair_s * AttentionPairs(start_pos, num_tokens);
}

double LoadCoefficients::RequestSeconds(double bytes) const {
  if (bytes <= 0) return 0;
  return latency_s + bytes / bytes_per_second;
}

absl::Status CostModelOptions::Validate() const {
  if (!(ewma_alpha > 0 && ewma_alpha <= 1)) {
    return absl::InvalidArgumentError("CostModelOptions.ewma_alpha must be in (0, 1]");
  }
  if (!(min_observed_seconds >= 0)) {
    return absl::InvalidArgumentError("CostModelOptions.min_observed_seconds must be >= 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CostModel>> CostModel::Create(const CostCoefficients& initial,
                                                             const CostModelOptions& options) {
  if (auto s = options.Validate(); !s.ok()) return s;
  if (auto s = CheckCoefficients(initial); !s.ok()) return s;
  return std::unique_ptr<CostModel>(new CostModel(initial, options));
}

CostModel::CostModel(const CostCoefficients& initial, const CostModelOptions& options)
    : options_(options), coefficients_(initial) {
  absl::MutexLock lock(&mu_);
  SeedLoadFitLocked();
}

CostCoefficients CostModel::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return coefficients_;
}

absl::Status CostModel::Reset(const CostCoefficients& coefficients) {
  if (auto s = CheckCoefficients(coefficients); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  coefficients_ = coefficients;
  SeedLoadFitLocked();
  return absl::OkStatus();
}

void CostModel::ObserveCompute(int64_t start_pos, int64_t num_tokens, double seconds) {
  if (!(seconds >= options_.min_observed_seconds) || !std::isfinite(seconds)) return;
  absl::MutexLock lock(&mu_);
  const double predicted = coefficients_.compute.LayerSeconds(start_pos, num_tokens);
  if (predicted <= 0) return;
  // Moving the scale factor toward measured/predicted keeps the fitted shape
  // (linear vs quadratic share) and tracks the overall speed.
  const double scale = 1 + options_.ewma_alpha * (seconds / predicted - 1);
  coefficients_.compute.fixed_s *= scale;
  coefficients_.compute.per_token_s *= scale;
  coefficients_.compute.per_attention_pair_s *= scale;
}

void CostModel::ObserveLoad(size_t bytes, double seconds) {
  if (bytes == 0 || !(seconds >= options_.min_observed_seconds) || !std::isfinite(seconds)) return;
  absl::MutexLock lock(&mu_);
  LoadCoefficients& load = coefficients_.load;
  const double a = options_.ewma_alpha;
  if (bytes <= options_.latency_probe_max_bytes) {
    const double latency =
        std::max(0.0, seconds - static_cast<double>(bytes) / load.bytes_per_second);
    load.latency_s += a * (latency - load.latency_s);
    return;
  }
  const double transfer = seconds - load.latency_s;
  // A request that finished within the latency estimate says nothing
  // reliable about bandwidth.
  if (transfer <= 0.1 * seconds) return;
  const double bw = static_cast<double>(bytes) / transfer;
  // Averaging time per byte (not bytes per second) weighs slow samples
  // properly: they are what delays the restore.
  const double inv = 1 / load.bytes_per_second + a * (1 / bw - 1 / load.bytes_per_second);
  if (inv > 0) load.bytes_per_second = 1 / inv;
}

void CostModel::SeedLoadFitLocked() {
  // Two points on the current line, half the weight each: a prior that the
  // first few restores move and later ones replace.
  const LoadCoefficients& load = coefficients_.load;
  const double x1 = load.bytes_per_second * 0.010;  // 10 ms of transfer
  load_fit_ = {};
  for (const auto& [x, y] : {std::pair<double, double>{0, load.latency_s},
                             std::pair<double, double>{x1, load.latency_s + 0.010}}) {
    load_fit_.w += 0.5;
    load_fit_.sx += 0.5 * x;
    load_fit_.sy += 0.5 * y;
    load_fit_.sxx += 0.5 * x * x;
    load_fit_.sxy += 0.5 * x * y;
  }
}

void CostModel::ObserveLoadStream(const LoadStreamSample& s) {
  if (!(s.bytes > 0) || !(s.seconds >= options_.min_observed_seconds) ||
      !std::isfinite(s.seconds) || !std::isfinite(s.bytes)) {
    return;
  }
  absl::MutexLock lock(&mu_);
  LoadCoefficients& load = coefficients_.load;
  const double a = options_.ewma_alpha;
  // Moving averages of the sufficient statistics of seconds = latency +
  // bytes / bandwidth over the streams seen (restores of every size), then
  // a weighted least-squares line through them. Restores load different
  // amounts, so the line separates the latency from the bandwidth without
  // timing anything inside a stream (a transport may deliver a stream's
  // blocks all at its end).
  LoadFit& f = load_fit_;
  f.w = (1 - a) * f.w + a;
  f.sx = (1 - a) * f.sx + a * s.bytes;
  f.sy = (1 - a) * f.sy + a * s.seconds;
  f.sxx = (1 - a) * f.sxx + a * s.bytes * s.bytes;
  f.sxy = (1 - a) * f.sxy + a * s.bytes * s.seconds;
  const double mx = f.sx / f.w, my = f.sy / f.w;
  const double var = f.sxx / f.w - mx * mx, cov = f.sxy / f.w - mx * my;
  double latency = -1, per_byte = -1;
  if (var > 0.01 * mx * mx) {  // sizes spread enough to tell the two apart
    per_byte = cov / var;
    latency = my - per_byte * mx;
    if (latency < 0) {  // through the origin instead
      latency = 0;
      per_byte = f.sxy / f.sxx;
    }
  }
  if (per_byte > 0 && std::isfinite(per_byte) && std::isfinite(latency)) {
    load.latency_s = latency;
    load.bytes_per_second = 1 / per_byte;
    return;
  }
  // One size only so far: the bandwidth under the current latency.
  const double transfer = s.seconds - load.latency_s;
  if (transfer <= 0.1 * s.seconds) return;
  const double inv =
      1 / load.bytes_per_second + a * (transfer / s.bytes - 1 / load.bytes_per_second);
  if (inv > 0) load.bytes_per_second = 1 / inv;
}

absl::StatusOr<ComputeCoefficients> FitComputeCoefficients(
    const std::vector<ComputeSample>& samples) {
  if (samples.size() < 2) {
    return absl::InvalidArgumentError("need at least two compute samples to fit");
  }
  // Rows are scaled by 1/seconds so each point's relative error counts the
  // same: the probe's short points would otherwise not matter at all.
  std::vector<std::array<double, 3>> rows;
  for (const ComputeSample& s : samples) {
    if (!(s.seconds > 0) || s.num_tokens <= 0) {
      return absl::InvalidArgumentError("compute samples need tokens > 0 and seconds > 0");
    }
    rows.push_back({1 / s.seconds, s.num_tokens / s.seconds,
                    AttentionPairs(s.start_pos, s.num_tokens) / s.seconds});
  }
  // Non-negative least squares by trying every active set (3 variables: 7
  // sets) and keeping the best non-negative solution.
  double best_residual = std::numeric_limits<double>::infinity();
  std::array<double, 3> best = {0, 0, 0};
  for (int mask = 1; mask < 8; ++mask) {
    std::array<int, 3> vars{};
    int k = 0;
    for (int v = 0; v < 3; ++v) {
      if (mask & (1 << v)) vars[k++] = v;
    }
    std::array<std::array<double, 3>, 3> ata{};
    std::array<double, 3> atb{};
    for (const auto& r : rows) {
      for (int i = 0; i < k; ++i) {
        atb[i] += r[vars[i]];
        for (int j = 0; j < k; ++j) ata[i][j] += r[vars[i]] * r[vars[j]];
      }
    }
    // Columns differ by orders of magnitude (1 vs n vs n^2); normalize them
    // so the pivot threshold means something.
    std::array<double, 3> norm{};
    for (int i = 0; i < k; ++i) norm[i] = std::sqrt(ata[i][i]);
    bool degenerate = false;
    for (int i = 0; i < k; ++i) degenerate |= !(norm[i] > 0);
    if (degenerate) continue;
    for (int i = 0; i < k; ++i) {
      atb[i] /= norm[i];
      for (int j = 0; j < k; ++j) ata[i][j] /= norm[i] * norm[j];
    }
    std::array<double, 3> x{};
    if (!Solve<3>(ata, atb, k, x)) continue;
    std::array<double, 3> full = {0, 0, 0};
    bool negative = false;
    for (int i = 0; i < k; ++i) {
      full[vars[i]] = x[i] / norm[i];
      negative |= full[vars[i]] < 0;
    }
    if (negative) continue;
    double residual = 0;
    for (const auto& r : rows) {
      const double e = r[0] * full[0] + r[1] * full[1] + r[2] * full[2] - 1;
      residual += e * e;
    }
    if (residual < best_residual) {
      best_residual = residual;
      best = full;
    }
  }
  if (!std::isfinite(best_residual)) {
    return absl::InvalidArgumentError("compute samples admit no non-negative fit");
  }
  ComputeCoefficients c;
  c.fixed_s = best[0];
  c.per_token_s = best[1];
  c.per_attention_pair_s = best[2];
  return c;
}

absl::StatusOr<ComputeCoefficients> ProbeCompute(ComputeBackend& backend,
                                                 const ComputeProbeOptions& options) {
  const ModelConfig& config = backend.config();
  if (options.repeats < 1) return absl::InvalidArgumentError("ComputeProbeOptions.repeats < 1");
  if (options.layer < 0 || options.layer >= config.n_layers) {
    return absl::InvalidArgumentError("ComputeProbeOptions.layer outside the model");
  }
  std::vector<int> counts = options.token_counts;
  std::sort(counts.begin(), counts.end());
  counts.erase(std::unique(counts.begin(), counts.end()), counts.end());
  if (counts.size() < 2 || counts.front() < 1) {
    return absl::InvalidArgumentError(
        "ComputeProbeOptions.token_counts needs two distinct positive counts");
  }
  // Small models have short contexts: shrink the probe to fit instead of
  // refusing to calibrate.
  const int capacity = config.seq_len;
  int late_start = std::min(options.late_start, capacity / 2);
  int late_tokens = std::min(options.late_tokens, capacity - late_start);
  std::vector<int> fitting;
  for (int n : counts) {
    if (n <= capacity) fitting.push_back(n);
  }
  if (fitting.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("ComputeProbeOptions.token_counts do not fit seq_len=", capacity));
  }
  const int max_tokens = std::max(fitting.back(), late_start + late_tokens);
  KRUL_ASSIGN_OR_RETURN(std::unique_ptr<BackendKvCache> cache,
                        backend.CreateKvCache(std::min(capacity, max_tokens)));
  KRUL_ASSIGN_OR_RETURN(std::unique_ptr<ActivationBuffer> hidden,
                        backend.CreateActivations(max_tokens));
  // Any finite input does: the cost does not depend on the values. It is
  // embedded again before every call so repeated layers cannot drift to
  // inf/NaN (slow paths on some CPUs).
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> token(0, config.vocab_size - 1);
  std::vector<int> tokens(max_tokens);
  for (int& t : tokens) t = token(rng);

  int calls = 0;
  auto time_once = [&](int start, int n) -> absl::StatusOr<double> {
    KRUL_RETURN_IF_ERROR(backend.Embed(std::span<const int>(tokens).first(n), hidden->data()));
    const int layer = (options.layer + calls++) % config.n_layers;
    KRUL_ASSIGN_OR_RETURN(std::unique_ptr<BackendMark> before, backend.RecordMark());
    KRUL_RETURN_IF_ERROR(backend.ComputeLayer(layer, *cache, start, n, hidden->data()));
    KRUL_ASSIGN_OR_RETURN(std::unique_ptr<BackendMark> after, backend.RecordMark());
    return backend.SecondsBetween(*before, *after);
  };
  std::vector<ComputeSample> samples;
  auto measure = [&](int start, int n) -> absl::Status {
    std::vector<double> times;
    for (int r = 0; r < options.repeats; ++r) {
      KRUL_ASSIGN_OR_RETURN(const double t, time_once(start, n));
      times.push_back(t);
    }
    samples.push_back({start, n, std::max(1e-9, Fastest(times))});
    return absl::OkStatus();
  };
  // Warm-up: the first call touches the layer's weights and allocates scratch.
  if (auto t = time_once(0, fitting.front()); !t.ok()) return t.status();
  for (int n : fitting) {
    KRUL_RETURN_IF_ERROR(measure(0, n));
  }
  if (late_tokens >= 1 && late_start >= 1) {
    // The prefix [0, late_start) must hold valid K/V for the late block's
    // attention to read; its values do not matter for timing.
    KRUL_RETURN_IF_ERROR(measure(late_start, late_tokens));
  }
  return FitComputeCoefficients(samples);
}

absl::StatusOr<LoadCoefficients> ProbeLoad(const LoadProbeFn& fetch,
                                           const LoadProbeOptions& options) {
  if (options.repeats < 1) return absl::InvalidArgumentError("LoadProbeOptions.repeats < 1");
  if (options.small_tokens < 1 || options.large_tokens <= options.small_tokens) {
    return absl::InvalidArgumentError("LoadProbeOptions needs 1 <= small_tokens < large_tokens");
  }
  auto time_point = [&](int tokens, size_t& bytes) -> absl::StatusOr<double> {
    std::vector<double> times;
    for (int r = 0; r < options.repeats; ++r) {
      const auto t0 = Clock::now();
      auto moved = fetch(tokens);
      if (!moved.ok()) return moved.status();
      times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      bytes = *moved;
    }
    return Fastest(times);
  };
  size_t small_bytes = 0, large_bytes = 0;
  auto small = time_point(options.small_tokens, small_bytes);
  if (!small.ok()) return small.status();
  auto large = time_point(options.large_tokens, large_bytes);
  if (!large.ok()) return large.status();
  if (large_bytes <= small_bytes) {
    return absl::InvalidArgumentError(
        "the large probe fetch moved no more bytes than the small one");
  }
  LoadCoefficients c;
  const double dt = *large - *small;
  // Timer noise can make the large fetch look no slower than the small one;
  // then bandwidth is beyond what the probe can resolve: bound it by the
  // large fetch alone.
  c.bytes_per_second = dt > 0 ? static_cast<double>(large_bytes - small_bytes) / dt
                              : static_cast<double>(large_bytes) / std::max(*large, 1e-9);
  c.latency_s = std::max(0.0, *small - static_cast<double>(small_bytes) / c.bytes_per_second);
  return c;
}

}  // namespace krul
