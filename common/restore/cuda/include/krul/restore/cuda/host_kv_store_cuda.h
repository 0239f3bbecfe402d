// A CUDA helper for GPU benchmarks and tests: a conversation's stored KV in
// pinned host memory (the paper's setting, KV in host DRAM), and a KvSource
// (kv_source.h) over it for the one Restorer (restorer.h).
//
// The source writes through the cache's BackendKvCache methods: plain rows
// with WriteRows (on a CudaKvCache one DMA per K and V, straight from the
// pinned rows), a shared pair's merged rows with WriteMergedRows (the CUDA
// cache's fast path: a copy and one expand kernel on the device).
//
// Thread safety: a CudaHostKvStore is read-only during a restore; its
// sources read it from the load thread and must not outlive it.
#ifndef KRUL_RESTORE_CUDA_HOST_KV_STORE_CUDA_H_
#define KRUL_RESTORE_CUDA_HOST_KV_STORE_CUDA_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/engine/backend_kv_cache.h"
#include "krul/engine/cuda/cuda_memory.h"
#include "krul/engine/cuda/engine_cuda.h"
#include "krul/restore/kv_source.h"

namespace krul {

// The stored KV in pinned host memory, in the engine's dtype and local KV
// heads, by absolute token position:
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

  // Plain rows [0, n) of every layer from `cache` (ReadRows, converted to
  // the store's dtype). INVALID_ARGUMENT when the shapes differ or n
  // exceeds either side; errors of ReadRows.
  absl::Status CopyPlainFromCache(const BackendKvCache& cache, int n);

  // Deterministic filler for benchmarks: K/V values and directions uniform in
  // [-1, 1), norms in [0.5, 1.5); `threads` host threads.
  void FillPattern(uint64_t seed, int threads);

  // A source over this store. Fetch of one layer writes its plain rows; of
  // two layers (a shared pair) the merged rows of the smaller one, expanded
  // by the cache (WriteMergedRows). Bytes: 2 rows per plain token, 2 rows
  // plus the norms per merged token. Fetch errors: INVALID_ARGUMENT for a
  // range outside the store, a cache of another kv_dim or a pair without
  // merged rows; UNIMPLEMENTED for a pair on a cache without the merged-row
  // fast path (a CPU KvCache); errors of the cache's writes. The source
  // borrows the store.
  std::unique_ptr<KvSource> NewSource() const;

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

}  // namespace krul

#endif  // KRUL_RESTORE_CUDA_HOST_KV_STORE_CUDA_H_
