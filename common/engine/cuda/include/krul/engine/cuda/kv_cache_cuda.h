// The KV cache of one sequence on a CUDA device: the CUDA backend's
// BackendKvCache (krul/engine/backend_kv_cache.h).
//
// Layout: per layer, K then V, each (capacity, kv_dim) rows of the engine's
// dtype, where kv_dim is the engine's local_kv_dim() (this rank's KV heads).
// Zeroed on creation.
//
// Writes from host memory go through a transfer stream of the cache's own
// (non-blocking), so a restore's loads overlap the engine's compute:
//   - StageRows hands out fp32 rows in pinned host memory; CommitRows
//     converts them to the cache's dtype (on the host) and copies them;
//   - WriteRows copies host rows of the cache's dtype straight to the device
//     (a DMA when the host memory is pinned); other dtypes are converted
//     through the staging rows;
//   - WriteMergedRows (the optional fast path) copies a shared pair's
//     merged rows to the device and expands them into both layers with one
//     kernel (kernels.h ExpandMergedPair), when their dtype is the cache's.
// After each write an event of the written layer is recorded on the
// transfer stream; CudaEngine::AwaitWrites makes the compute stream wait for
// it. WaitForWrites waits for the transfer stream. The staging rows are
// reused only after their previous copy finished.
//
// ReadRows copies to the host on the transfer stream and waits; the
// engine's compute that wrote the rows must be complete (Forward
// synchronizes).
//
// Every call makes the cache's device current on the calling thread.
// Thread safety as BackendKvCache: one load thread may write while the
// engine computes on other rows. Move-only.
#ifndef KRUL_ENGINE_CUDA_KV_CACHE_CUDA_H_
#define KRUL_ENGINE_CUDA_KV_CACHE_CUDA_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/dtype.h"
#include "krul/engine/backend_kv_cache.h"
#include "krul/engine/cuda/cuda_memory.h"

namespace krul {

class CudaEngine;

class CudaKvCache final : public BackendKvCache {
 public:
  // A cache for `engine`'s device, dtype and local KV heads.
  // INVALID_ARGUMENT when capacity is not in [1, seq_len]; allocation
  // errors as CudaStatus.
  static absl::StatusOr<CudaKvCache> Create(const CudaEngine& engine, int capacity_tokens);
  ~CudaKvCache() override;
  CudaKvCache(CudaKvCache&&) noexcept;
  CudaKvCache& operator=(CudaKvCache&&) noexcept;

  int n_layers() const override { return n_layers_; }
  int kv_dim() const override { return kv_dim_; }
  int capacity() const override { return capacity_; }
  DType dtype() const { return dtype_; }
  int device() const { return device_; }
  int n_kv_heads() const { return n_kv_heads_; }
  // Bytes of one row (one token of K or of V of one layer).
  size_t row_bytes() const { return row_bytes_; }

  // Device pointers to the row of `pos` (0 <= pos <= capacity).
  void* key(int layer, int pos) const;
  void* value(int layer, int pos) const;

  // BackendKvCache: see above and backend_kv_cache.h.
  absl::StatusOr<KvLayerView> StageRows(int layer, int begin, int num_tokens) override;
  absl::Status CommitRows(const KvLayerView& staged) override;
  absl::Status WriteRows(int layer, int begin, int num_tokens, DType dtype, const void* keys,
                         const void* values) override;
  absl::Status WriteMergedRows(const MergedKvRows& rows) override;
  absl::Status WaitForWrites() override;
  absl::Status ReadRows(int layer, int begin, int num_tokens, float* keys,
                        float* values) const override;

  // Makes `stream` wait for every write committed to `layer` so far
  // (CudaEngine::AwaitWrites). INVALID_ARGUMENT for a bad layer.
  absl::Status OrderWritesBefore(int layer, cudaStream_t stream);

 private:
  struct Transfer;  // transfer stream, per-layer events, staging
  CudaKvCache();
  // Waits until the staging rows are no longer read by a copy.
  absl::Status WaitForStaging();

  int n_layers_ = 0;
  int kv_dim_ = 0;
  int n_kv_heads_ = 0;
  int capacity_ = 0;
  DType dtype_ = DType::kF32;
  int device_ = 0;
  size_t row_bytes_ = 0;
  CudaDeviceBuffer storage_;
  std::unique_ptr<Transfer> transfer_;
};

}  // namespace krul

#endif  // KRUL_ENGINE_CUDA_KV_CACHE_CUDA_H_
