// The restore cost model: how long recomputing a layer over a token range
// takes, and how long loading some bytes of KV takes.
//
// Recompute of one transformer layer for tokens [start, start + n):
//
//   fixed_s + per_token_s * n + per_attention_pair_s * pairs(start, n)
//
// where pairs(start, n) = n * start + n * (n + 1) / 2 counts the (query, key)
// products of causal attention (query at position p reads p + 1 keys): the
// projections and the feed-forward grow linearly with n, attention
// quadratically, which is what makes long histories expensive to recompute.
// Llama layers all have the same shape, so one set of coefficients serves
// every layer.
//
// Loading: a restore streams everything it loads as ONE request (the
// worker reads all blocks of a restore in one streamed read, layer 0's
// first), so the load stream of a restore that loads `bytes` in total takes
//
//   latency_s + bytes / bytes_per_second
//
// with the latency (request round trip, data-plane grant, first byte)
// charged once per restore, not once per layer or load step; the stream
// reaches layer l after latency_s + (bytes of layers <= l) / bandwidth.
//
// The coefficients come from a start-up probe (ProbeCompute runs a compute
// backend's ComputeLayer on a few token counts; ProbeLoad times fetches of
// two sizes through the real path) and are refreshed from live measurements
// (ObserveCompute per layer, ObserveLoadStream once per restore) by an
// exponentially weighted moving average of measured / predicted time, so a
// slower GPU clock or a congested link shifts the plan within a few
// restores without refitting the shape of the curve.
//
// Thread safety: CostModel is thread-safe (the restore executor's recompute
// and load threads report to it concurrently); CostCoefficients is a plain
// value, a snapshot the planner works on.
#ifndef KRUL_RESTORE_COST_MODEL_H_
#define KRUL_RESTORE_COST_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "krul/engine/backend.h"

namespace krul {

// Recompute cost of one layer (seconds).
struct ComputeCoefficients {
  double fixed_s = 0;               // per ComputeLayer call
  double per_token_s = 0;           // projections + feed-forward, per token
  double per_attention_pair_s = 0;  // per (query, key) product of attention

  // Seconds to run one layer over tokens [start_pos, start_pos + num_tokens);
  // 0 when num_tokens <= 0 (no call is made).
  double LayerSeconds(int64_t start_pos, int64_t num_tokens) const;
};

// Load cost of one restore's load stream (seconds).
struct LoadCoefficients {
  double latency_s = 0;         // once per stream (per restore that loads)
  double bytes_per_second = 1;  // sustained bandwidth, decode included

  // Seconds for a stream (one request) of `bytes`; 0 when bytes == 0
  // (nothing requested).
  double RequestSeconds(double bytes) const;
};

// One restore's load stream as measured: what ObserveLoadStream learns from.
struct LoadStreamSample {
  double bytes = 0;    // everything the stream brought
  double seconds = 0;  // from its first request to its last step landed
};

struct CostCoefficients {
  ComputeCoefficients compute;
  LoadCoefficients load;
};

// (query, key) products of causal attention for queries at positions
// [start_pos, start_pos + num_tokens).
double AttentionPairs(int64_t start_pos, int64_t num_tokens);

struct CostModelOptions {
  // Weight of a new measurement in the moving averages, in (0, 1].
  double ewma_alpha = 0.25;
  // Measurements shorter than this are dominated by timer noise and
  // scheduling jitter and are ignored.
  double min_observed_seconds = 50e-6;
  // Load requests below this size update the latency estimate; larger ones
  // the bandwidth.
  size_t latency_probe_max_bytes = 64 * 1024;

  // INVALID_ARGUMENT naming the field when a value is out of range.
  absl::Status Validate() const;
};

class CostModel {
 public:
  // INVALID_ARGUMENT if `options` do not validate or a coefficient is
  // negative / the bandwidth is not positive.
  static absl::StatusOr<std::unique_ptr<CostModel>> Create(const CostCoefficients& initial,
                                                           const CostModelOptions& options = {});

  // A consistent copy of the current coefficients.
  CostCoefficients Snapshot() const;

  // Replaces the coefficients (e.g. after a new probe). Same checks as Create.
  absl::Status Reset(const CostCoefficients& coefficients);

  // Live refresh: a layer computed over [start_pos, start_pos + num_tokens)
  // took `seconds`. Scales all compute coefficients by the moving average of
  // measured / predicted. Ignored when the measurement is too short or the
  // prediction is zero.
  void ObserveCompute(int64_t start_pos, int64_t num_tokens, double seconds);

  // Live refresh: one load request of `bytes` took `seconds`. Small requests
  // refresh the latency, large ones the bandwidth (after subtracting the
  // current latency estimate).
  void ObserveLoad(size_t bytes, double seconds);

  // Live refresh from one restore's whole load stream: a line
  // seconds = latency + bytes / bandwidth fitted (weighted least squares)
  // through moving averages of the streams seen, restores of different
  // sizes telling latency from bandwidth; the start-up coefficients are
  // its prior. Until the sizes differ enough, only the bandwidth moves.
  // Ignored when the stream is too short to say anything.
  void ObserveLoadStream(const LoadStreamSample& sample);

 private:
  CostModel(const CostCoefficients& initial, const CostModelOptions& options);

  // Moving averages (weight, sums of bytes, seconds, bytes^2,
  // bytes*seconds) of the load streams seen (ObserveLoadStream).
  struct LoadFit {
    double w = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  };
  void SeedLoadFitLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CostModelOptions options_;
  mutable absl::Mutex mu_;
  CostCoefficients coefficients_ ABSL_GUARDED_BY(mu_);
  LoadFit load_fit_ ABSL_GUARDED_BY(mu_);
};

// ---- start-up probe ---------------------------------------------------------

struct ComputeProbeOptions {
  // Token counts run from position 0; at least two distinct counts.
  std::vector<int> token_counts = {32, 128, 384};
  // A short block run at a later position isolates the attention term.
  int late_start = 512;
  int late_tokens = 32;
  // Each point is timed this many times; the fastest run counts (the others
  // carry page faults and cache warm-up).
  int repeats = 3;
  // Timed calls go round the layers starting here, so each finds its
  // weights as cold as a restore does (a restore runs every layer once;
  // timing one layer again and again would keep its weights in cache).
  int layer = 0;
};

// Times backend.ComputeLayer on a scratch cache (between two of the
// backend's marks: the wall clock on the CPU, device events on CUDA) and
// fits ComputeCoefficients by non-negative least squares on relative error.
// Inputs are the embeddings of seeded random tokens, re-embedded before
// every call. INVALID_ARGUMENT if the options are out of range or do not
// fit the model's seq_len; errors from the backend are passed through.
// Takes a few tens of milliseconds for small models; the backend must not be
// used concurrently and should have no observer.
absl::StatusOr<ComputeCoefficients> ProbeCompute(ComputeBackend& backend,
                                                 const ComputeProbeOptions& options = {});

// One timed load of the probe: performs a fetch and returns the bytes moved.
using LoadProbeFn = std::function<absl::StatusOr<size_t>(int num_tokens)>;

struct LoadProbeOptions {
  int small_tokens = 1;    // one request dominated by latency
  int large_tokens = 256;  // one request dominated by bandwidth
  int repeats = 3;
};

// Calls `fetch` with the small and the large token count (each `repeats`
// times, fastest kept) and fits latency and bandwidth through the two
// points. INVALID_ARGUMENT if the options are out of range or the large
// fetch moves no more bytes than the small one; errors from `fetch` are
// passed through.
absl::StatusOr<LoadCoefficients> ProbeLoad(const LoadProbeFn& fetch,
                                           const LoadProbeOptions& options = {});

// Least-squares fit of ComputeCoefficients to measured points (start, n,
// seconds), minimizing relative error, all coefficients >= 0. Exposed for
// tests. INVALID_ARGUMENT when there are fewer than two points or a time is
// not positive.
struct ComputeSample {
  int64_t start_pos = 0;
  int64_t num_tokens = 0;
  double seconds = 0;
};
absl::StatusOr<ComputeCoefficients> FitComputeCoefficients(
    const std::vector<ComputeSample>& samples);

}  // namespace krul

#endif  // KRUL_RESTORE_COST_MODEL_H_
