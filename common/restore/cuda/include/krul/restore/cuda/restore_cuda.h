// Restoring a conversation's KV cache on the GPU (the executor of a
// restore_plan.h RestorePlan), and the cost model's start-up probe on the
// device.
//
// Two streams run per restore:
//   load stream     the plan's LoadSteps in order: host pinned memory ->
//                   device with cudaMemcpyAsync, straight into the cache
//                   rows (a shared pair's merged rows go through a staging
//                   buffer and a kernel that writes both layers); an event
//                   after each step;
//   compute stream  (the engine's) the recompute of every layer's prefix
//                   R_0..R_{L-1}, then the new input's prefill P_0..P_{L-1},
//                   where P_l first waits (cudaStreamWaitEvent) for the last
//                   load step that wrote layer l.
// So layer l's new-input prefill starts when layer l is restored, neither
// stream waits for the host, and the two overlap as the plan's timing model
// assumes. The UCX data path of the worker delivers into the same pinned
// layout (UCX registration of CUDA memory is the worker's business).
//
// Thread safety: a CudaRestorer belongs to one engine and is used on one
// thread; a CudaHostKvStore is read-only during a restore.
#ifndef KRUL_RESTORE_CUDA_RESTORE_CUDA_H_
#define KRUL_RESTORE_CUDA_RESTORE_CUDA_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/restore/cost_model.h"
#include "krul/engine/cuda/engine_cuda.h"
#include "krul/engine/cuda/cuda_memory.h"
#include "krul/restore/restore_plan.h"

namespace krul {

// A conversation's stored KV in pinned host memory, in the engine's dtype and
// local KV heads, by absolute token position:
//  - plain rows for every layer: K (max_tokens, kv_dim), V (max_tokens,
//    kv_dim);
//  - merged rows for each layer a listed as a pair's first layer (any
//    partner): K directions, V directions (max_tokens, kv_dim) and norms
//    (max_tokens, n_kv_heads, 4) fp32 = |K_a| |K_b| |V_a| |V_b|, the payload
//    layout of compressor.h's merged segments without retained units.
class CudaHostKvStore {
 public:
  // INVALID_ARGUMENT for max_tokens < 1 or a listed layer out of range;
  // allocation errors as CudaStatus (RESOURCE_EXHAUSTED).
  static absl::StatusOr<std::unique_ptr<CudaHostKvStore>> Create(
      const CudaEngine& engine, int max_tokens, std::span<const int> merged_first_layers);

  int n_layers() const { return n_layers_; }
  int max_tokens() const { return max_tokens_; }
  int kv_dim() const { return kv_dim_; }
  int n_kv_heads() const { return n_kv_heads_; }
  int head_dim() const { return kv_dim_ / n_kv_heads_; }
  DType dtype() const { return dtype_; }
  size_t row_bytes() const { return row_bytes_; }  // one token of K (or V) of one layer
  size_t pinned_bytes() const;
  bool has_merged(int layer) const;

  // Row pointers (0 <= pos <= max_tokens; the merged ones need has_merged).
  void* plain_key(int layer, int pos) const;
  void* plain_value(int layer, int pos) const;
  void* merged_key_dirs(int layer, int pos) const;
  void* merged_value_dirs(int layer, int pos) const;
  float* merged_norms(int layer, int pos) const;

  // Plain rows [0, n) of every layer from `cache` (synchronous).
  // INVALID_ARGUMENT when shapes differ or n exceeds either side.
  absl::Status CopyPlainFromCache(const CudaKvCache& cache, int n);

  // Deterministic filler for benchmarks: K/V values and directions uniform in
  // [-1, 1), norms in [0.5, 1.5); `threads` host threads.
  void FillPattern(uint64_t seed, int threads);

 private:
  CudaHostKvStore() = default;
  int n_layers_ = 0;
  int max_tokens_ = 0;
  int kv_dim_ = 0;
  int n_kv_heads_ = 0;
  DType dtype_ = DType::kF32;
  size_t row_bytes_ = 0;
  std::vector<CudaPinnedBuffer> plain_;   // per layer: K rows then V rows
  std::vector<CudaPinnedBuffer> merged_;  // per layer (empty if none): Kdir, Vdir, norms
};

// What one restore did. Stream times are from the restore's start event.
struct CudaRestoreResult {
  double ttft_seconds = 0;       // host wall clock: Restore() entry to logits on the host
  double recompute_seconds = 0;  // compute stream: last recomputed layer done (0 if none)
  double load_seconds = 0;       // load stream: last load step done (0 if none)
  double restored_seconds = 0;   // max of the two: every layer's history in the cache
  double device_seconds = 0;     // compute stream: new input prefilled, logits computed
  int64_t loaded_bytes = 0;      // host -> device bytes
  int64_t recomputed_token_layers = 0;
};

class CudaRestorer {
 public:
  // Streams, events and staging for `engine` (borrowed; must outlive this).
  static absl::StatusOr<std::unique_ptr<CudaRestorer>> Create(CudaEngine& engine);
  ~CudaRestorer();

  // Restores `plan` into `cache`: layer l recomputes history [0, n_l) from
  // `history_tokens` and loads [n_l, N) from `store` as the plan's
  // LoadSteps say; then prefills `new_tokens` at positions [N, N + m) and,
  // when m > 0, writes the last token's logits into `logits` (vocab floats,
  // host). Returns when everything is done. INVALID_ARGUMENT when the plan
  // is inconsistent (sizes, not a pyramid, a step the store cannot serve),
  // history_tokens.size() != N, new_tokens.size() != plan.new_tokens, the
  // cache or store is too small or of another shape, or logits has the
  // wrong size; FAILED_PRECONDITION when the engine has an observer or more
  // than one tensor-parallel rank (drive each rank's restorer from its own
  // thread with a rank-local store: not done here); device errors as
  // CudaStatus.
  absl::StatusOr<CudaRestoreResult> Restore(const RestorePlan& plan,
                                            std::span<const int> history_tokens,
                                            std::span<const int> new_tokens,
                                            const CudaHostKvStore& store, CudaKvCache& cache,
                                            std::span<float> logits);

 private:
  class Impl;
  explicit CudaRestorer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The cost model's start-up probe on the device: times engine.ComputeLayer
// with CUDA events on a scratch cache (inputs are embeddings of seeded
// random tokens, never zeros) and fits ComputeCoefficients
// (FitComputeCoefficients). Errors as ProbeCompute (cost_model.h) plus
// device errors. The engine must have no observer.
absl::StatusOr<ComputeCoefficients> ProbeCudaCompute(CudaEngine& engine,
                                                     const ComputeProbeOptions& options = {});

// Times host pinned -> device copies of `bytes_per_token` x tokens, split in
// two copies (K and V) as a restore's plain load step does, and fits
// LoadCoefficients (ProbeLoad). INVALID_ARGUMENT for bytes_per_token == 0;
// errors as ProbeLoad plus device errors.
absl::StatusOr<LoadCoefficients> ProbeCudaLoad(const CudaEngine& engine, size_t bytes_per_token,
                                               const LoadProbeOptions& options = {});

}  // namespace krul

#endif  // KRUL_RESTORE_CUDA_RESTORE_CUDA_H_
