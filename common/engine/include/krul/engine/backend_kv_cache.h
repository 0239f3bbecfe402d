// The KV cache of one sequence on a compute backend (backend.h), as the
// restore path and the persister see it, whatever memory it lives in.
//
// Rows. Per layer, K and V are each (capacity, kv_dim) rows; row p is token
// position p. The cache does not track which positions are valid: the
// backend's compute writes [start, start + n) and the caller keeps the
// sequence length (the restore path fills ranges out of order).
//
// Writing from host memory (a KvSource on the restore's load thread):
//   - StageRows + CommitRows: the source decodes fp32 rows straight into
//     the staged view. On the CPU the view IS the cache (no copy, commit does
//     nothing); on CUDA it is pinned host staging that CommitRows converts
//     to the cache's dtype and copies to the device.
//   - WriteRows: rows already in some dtype in host memory (e.g. a pinned
//     KV store in the cache's dtype: one DMA on CUDA).
//   - WriteMergedRows (optional): a shared pair's merged rows, expanded into
//     both layers by the backend (CUDA: one kernel on the device).
// Writes may be asynchronous: WaitForWrites() returns when every write
// committed so far has landed, and ComputeBackend::AwaitWrites orders them
// before the backend's next compute on a layer. Host memory passed to
// WriteRows / WriteMergedRows must stay valid and unchanged until
// WaitForWrites() returns.
//
// Reading back to the host (the persister): ReadRows, fp32. The backend's
// enqueued compute that wrote those rows must be complete (Forward and
// ComputeLogits synchronize; otherwise call ComputeBackend::Synchronize).
//
// Thread safety: not thread-safe, with one exception: one thread (the load
// thread) may call the write methods and WaitForWrites while the backend
// computes on other rows or layers of the cache from another thread.
#ifndef KRUL_ENGINE_BACKEND_KV_CACHE_H_
#define KRUL_ENGINE_BACKEND_KV_CACHE_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/dtype.h"

namespace krul {

class KvCache;  // kv_cache.h: the CPU backend's cache

// fp32 rows of one layer's K and V for tokens [begin, begin + num_tokens),
// in host memory. Row t of `keys` / `values` is token begin + t; each row
// has kv_dim floats.
struct KvLayerView {
  int layer = 0;
  int begin = 0;
  int num_tokens = 0;
  int kv_dim = 0;
  float* keys = nullptr;    // (num_tokens, kv_dim)
  float* values = nullptr;  // (num_tokens, kv_dim)

  float* key(int t) const { return keys + static_cast<size_t>(t) * kv_dim; }
  float* value(int t) const { return values + static_cast<size_t>(t) * kv_dim; }
  size_t bytes() const { return 2 * sizeof(float) * static_cast<size_t>(num_tokens) * kv_dim; }
};

// A shared pair's stored rows for tokens [begin, begin + num_tokens):
// compressor.h's kMerged payload without retained units. Per token t, KV
// head h and tensor, layer `first` restores as |x_first| * dir / |dir| and
// `second` as |x_second| * dir / |dir|. Host memory.
struct MergedKvRows {
  int first = 0;   // the pair's first layer
  int second = 0;  // its second layer
  int begin = 0;
  int num_tokens = 0;
  int n_kv_heads = 0;
  DType dtype = DType::kF32;
  const void* key_dirs = nullptr;    // (num_tokens, kv_dim) dtype
  const void* value_dirs = nullptr;  // (num_tokens, kv_dim) dtype
  // (num_tokens, n_kv_heads, 4) fp32 = |K_first| |K_second| |V_first| |V_second|
  const float* norms = nullptr;
};

class BackendKvCache {
 public:
  virtual ~BackendKvCache() = default;

  virtual int n_layers() const = 0;
  // Floats (elements) of one row: the KV heads this cache holds times
  // head_size (a tensor-parallel rank holds its own heads only).
  virtual int kv_dim() const = 0;
  virtual int capacity() const = 0;

  // ---- writes from host memory ----

  // fp32 host rows to fill with `layer`'s K and V for [begin, begin + n);
  // nothing reaches the cache before CommitRows(view). The view stays valid
  // until the next StageRows or CommitRows. INVALID_ARGUMENT for a layer or
  // range outside the cache; allocation errors (RESOURCE_EXHAUSTED).
  virtual absl::StatusOr<KvLayerView> StageRows(int layer, int begin, int num_tokens) = 0;
  // Writes the rows of a view StageRows returned (possibly asynchronously).
  // INVALID_ARGUMENT for a view this cache did not stage; device errors.
  virtual absl::Status CommitRows(const KvLayerView& staged) = 0;

  // Writes `layer`'s K and V for [begin, begin + n) from host rows of
  // `dtype` (each (n, kv_dim)), converting to the cache's storage type.
  // INVALID_ARGUMENT for a range outside the cache or an unknown dtype;
  // device errors.
  virtual absl::Status WriteRows(int layer, int begin, int num_tokens, DType dtype,
                                 const void* keys, const void* values) = 0;

  // (optional) Restores both layers of a shared pair from merged rows.
  // UNIMPLEMENTED when the backend has no fast path (the caller then
  // expands on the host and uses StageRows); INVALID_ARGUMENT for layers or
  // a range outside the cache or heads that do not divide kv_dim.
  virtual absl::Status WriteMergedRows(const MergedKvRows& rows);

  // Returns when every write committed so far has landed in the cache;
  // the first error of an asynchronous write otherwise.
  virtual absl::Status WaitForWrites() = 0;

  // ---- reads back to the host ----

  // Copies `layer`'s K and V for [begin, begin + n) into host fp32 rows
  // (each (n, kv_dim)). INVALID_ARGUMENT for a range outside the cache;
  // device errors.
  virtual absl::Status ReadRows(int layer, int begin, int num_tokens, float* keys,
                                float* values) const = 0;

  // (optional) This cache as a host KvCache when it is one (the CPU
  // backend's), so readers can skip a copy; nullptr otherwise.
  virtual const KvCache* host_cache() const { return nullptr; }

 protected:
  BackendKvCache() = default;
  // Movable for the value-type caches (KvCache, CudaKvCache).
  BackendKvCache(BackendKvCache&&) = default;
  BackendKvCache& operator=(BackendKvCache&&) = default;

  // INVALID_ARGUMENT unless 0 <= layer < n_layers() and [begin, begin + n)
  // lies in [0, capacity()) with n >= 0.
  absl::Status CheckRows(int layer, int begin, int num_tokens) const;
};

// A host copy of rows [0, num_tokens) of every layer of `cache`, as a CPU
// KvCache of capacity num_tokens. INVALID_ARGUMENT for num_tokens outside
// [1, cache.capacity()]; errors of ReadRows.
absl::StatusOr<KvCache> CopyToHost(const BackendKvCache& cache, int num_tokens);

}  // namespace krul

#endif  // KRUL_ENGINE_BACKEND_KV_CACHE_H_
