// Token-wise heterogeneous estimator of cross-layer attention similarity.
//
// While a turn is generated, the engine hands every layer's attention
// probabilities to an AttentionObserver. The estimator accumulates, for every
// pair of layers (a, b), the squared Euclidean distance of their attention
// rows over the turn's tokens:
//
//   D[a][b] += sum over query heads h and keys k of (A_a[h,q,k] - A_b[h,q,k])^2
//
// (grouped-query attention is compared per query head), and per layer the
// share of attention mass on the first and on the last `edge_fraction` of the
// context, which the selector uses to find input-sensitive layers.
//
// Prefill and decode tokens are handled differently, as the design asks:
//  - Prefill (a block of more than one query): the block is copied on the
//    engine thread (one memcpy, or only the sampled rows) and handed to a
//    background thread, which pairs it with the other layers' copies of the
//    same queries and updates its own D off the critical path. The engine
//    runs all layers of a token block before the next block, so the
//    background thread holds at most one block's rows for every layer.
//  - Decode (a block of one query): each layer's rows are kept in a small
//    L x heads x context buffer (the engine writes them there directly,
//    see DecodeBuffer) until the token's last layer arrives; then every
//    pair of layers is compared at once, on the engine thread, exactly
//    (every head, every token), and the rows are dropped. The comparison
//    runs over L1-sized chunks of all layers' rows with 4 x 4 register
//    tiles of layer pairs (AVX2 where the build targets it), which keeps it
//    near 1.5% of decode time on the tiny real models (krul-bench-estimator,
//    docs/benchmarks.md). A token whose last layer never comes is compared
//    among the layers that came, at the next token or at Finish(). The
//    comparison is parallelized on `decode_pool` when one is given.
// Finish() waits for the background work and returns prefill + decode.
//
// Sampling. Everything is exact by default (every head, every query). A
// prefill block whose rows for all layers would exceed `max_slot_bytes` is
// subsampled deterministically (every s-th query, s the smallest power of two
// that fits), and strides (of prefill queries and heads, decode heads and
// decode tokens) can be forced with the *_stride options. A sampled
// row counts with the weight of the rows it stands for (an unbiased estimate
// of the full sum); SimilarityEstimate reports how many rows were compared.
//
// Attach the estimator while a turn is generated (prefill of the new input,
// decode); detach it while the restore path recomputes history layer by
// layer, which would report partial blocks (they are handled, but only
// compared among the layers reported).
//
// Thread safety: OnAttention, DecodeBuffer and Finish/Reset must be called
// from one thread at a time (the engine thread); the estimator's background
// thread is internal. One estimator per Engine / conversation.
#ifndef KRUL_COMPRESS_SIMILARITY_ESTIMATOR_H_
#define KRUL_COMPRESS_SIMILARITY_ESTIMATOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/thread_pool.h"
#include "krul/engine/backend.h"
#include "krul/model/model.h"

namespace krul {

struct SimilarityEstimatorOptions {
  // Share of the context (at each query) that counts as its "first" and
  // "last" part for the edge-mass statistics. In (0, 0.5]. Default 0.1.
  double edge_fraction = 0.1;
  // Compare only every n-th query of a prefill block (1 = all). Default 1.
  int prefill_query_stride = 1;
  // Compare only query heads h with h % stride == 0 (1 = all). Default 1.
  int prefill_head_stride = 1;
  int decode_head_stride = 1;
  // Compare only decode tokens at positions p with p % stride == 0, each
  // standing for `stride` tokens (1 = all). The cheapest way to cut the
  // decode cost on tiny models, where it is largest relative to the engine.
  int decode_token_stride = 1;
  // Bytes the background thread may hold for one query block across all
  // layers before queries are subsampled. Also the most the estimator keeps
  // of freed copy buffers for reuse (across turns, so later prefills copy
  // into warm memory instead of page-faulting). Default 256 MiB.
  size_t max_slot_bytes = size_t{256} << 20;
  // Bytes of copied prefill rows waiting for or held by the background
  // thread; above it, OnAttention blocks until the thread catches up
  // (backpressure, counted in SimilarityEstimate::blocked_seconds).
  // Must be >= max_slot_bytes. Default 1 GiB.
  size_t max_pending_bytes = size_t{1} << 30;
  // Pool for the decode-token comparison (typically the engine's own pool,
  // idle while the observer runs). Not owned; nullptr = engine thread only.
  // Used once per token, for many layers and long contexts only: on a
  // 2-core machine waking the pool cost more than it saved
  // (krul-bench-estimator --decode_pool).
  ThreadPool* decode_pool = nullptr;

  // INVALID_ARGUMENT naming the field when out of range.
  absl::Status Validate() const;
};

// What one turn (or several merged turns) measured.
struct SimilarityEstimate {
  int n_layers = 0;
  // (n_layers, n_layers) row-major, symmetric, zero diagonal: the weighted
  // sum over compared rows of the squared row distance.
  std::vector<double> distance;
  // The prefill and decode parts of `distance` (distance = their sum).
  std::vector<double> prefill_distance;
  std::vector<double> decode_distance;
  // Per layer: weighted sums over rows of the attention mass on the first /
  // last edge_fraction of the row's context, and the weight those sums are
  // over (number of (head, query) rows represented). The windows never
  // overlap: first = keys [0, w), last = [max(w, ctx - w), ctx) with
  // w = ceil(edge_fraction * ctx), ctx = query position + 1.
  std::vector<double> first_mass_sum;
  std::vector<double> last_mass_sum;
  std::vector<double> mass_weight;
  // Query positions seen, split by path (a position counts once, however
  // many layers reported it).
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  // (head, query) rows represented by D per layer pair (the denominator of
  // MeanDistance) and rows actually compared (< represented when sampled).
  double rows_represented = 0;
  int64_t rows_compared = 0;
  bool sampled = false;  // true when any row was skipped by sampling
  // Seconds spent inside OnAttention on the engine thread (the critical-path
  // cost), of it on decode rows, of it waiting for backpressure, and on the
  // background thread.
  double engine_thread_seconds = 0;
  double decode_engine_seconds = 0;
  double blocked_seconds = 0;
  double background_seconds = 0;
  double edge_fraction = 0.1;

  double Distance(int a, int b) const { return distance[static_cast<size_t>(a) * n_layers + b]; }
  // D[a][b] per represented row (0 when nothing was observed): comparable
  // across conversations of different lengths; in [0, 2].
  double MeanDistance(int a, int b) const;
  // Mean attention share of `layer` on the first / last part of the context;
  // EdgeMass = FirstMass + LastMass, in [0, 1]. 0 when nothing was observed.
  double FirstMass(int layer) const;
  double LastMass(int layer) const;
  double EdgeMass(int layer) const { return FirstMass(layer) + LastMass(layer); }

  // An empty estimate (all zero) for `n_layers` layers.
  static SimilarityEstimate Empty(int n_layers, double edge_fraction = 0.1);
  // Adds `other` (e.g. another conversation of a calibration set) into this
  // one. INVALID_ARGUMENT when the layer counts or edge fractions differ.
  absl::Status Merge(const SimilarityEstimate& other);
};

class SimilarityEstimator final : public AttentionObserver {
 public:
  // INVALID_ARGUMENT when `config` or `options` does not validate. Starts the
  // background thread.
  static absl::StatusOr<std::unique_ptr<SimilarityEstimator>> Create(
      const ModelConfig& config, const SimilarityEstimatorOptions& options = {});
  ~SimilarityEstimator() override;  // waits for and discards background work
  SimilarityEstimator(const SimilarityEstimator&) = delete;
  SimilarityEstimator& operator=(const SimilarityEstimator&) = delete;

  // Called by the engine. A block of one query takes the decode path, more
  // take the prefill path. Blocks whose layer or head count does not match
  // the model, or whose shape is inconsistent (context_len !=
  // query_begin + num_queries, or beyond seq_len), are ignored and counted in
  // ignored_blocks() (an observer cannot return an error).
  void OnAttention(const AttentionWeights& weights) override;

  // Called by the engine before a decode block: the layer's slot in the
  // estimator's per-token buffer, which the rows are kept in until the
  // token's last layer, so the engine writes them there instead of the
  // estimator copying them. nullptr (the engine's own buffer) for the last
  // layer, with decode head sampling, and for a malformed request.
  float* DecodeBuffer(int layer, int position, int n_heads, int context_len) override;

  // Waits for the background thread, returns everything observed since
  // construction or the last Finish/Reset, and starts a fresh accumulation.
  SimilarityEstimate Finish();

  // Waits for the background thread and discards what was observed.
  void Reset();

  int64_t ignored_blocks() const;

  const SimilarityEstimatorOptions& options() const;

 private:
  class Impl;
  explicit SimilarityEstimator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace krul

#endif  // KRUL_COMPRESS_SIMILARITY_ESTIMATOR_H_
