// Per-layer key/value cache of one sequence (conversation), fp32 in host
// memory: the CPU backend's BackendKvCache (backend_kv_cache.h).
//
// Layout per layer: K and V are each (capacity_tokens, kv_dim) row-major, so
// a token range of one layer is one contiguous block, which is what the
// compressor and the KV store move around. The cache does not track which
// positions are valid: the engine writes positions [start, start + n) and the
// caller keeps the sequence length (the restore path fills ranges out of
// order). Writes through the BackendKvCache methods land before they return
// (StageRows hands out the cache's own rows; CommitRows does nothing).
//
// A value type (movable). Not thread-safe; distinct layers may be written
// by distinct threads.
#ifndef KRUL_ENGINE_KV_CACHE_H_
#define KRUL_ENGINE_KV_CACHE_H_

#include <cstddef>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "krul/base/aligned_buffer.h"
#include "krul/engine/backend_kv_cache.h"
#include "krul/model/model.h"

namespace krul {

class KvCache final : public BackendKvCache {
 public:
  // A zeroed cache for `capacity_tokens` positions of a model with n_layers
  // layers and kv_dim = config.kv_dim(). INVALID_ARGUMENT when the capacity
  // is not in [1, config.seq_len].
  static absl::StatusOr<KvCache> Create(const ModelConfig& config, int capacity_tokens);
  // A zeroed cache of any shape (e.g. a tensor-parallel rank's rows).
  // INVALID_ARGUMENT unless every argument is >= 1.
  static absl::StatusOr<KvCache> Create(int n_layers, int kv_dim, int capacity_tokens);

  KvCache(KvCache&&) = default;
  KvCache& operator=(KvCache&&) = default;

  int n_layers() const override { return n_layers_; }
  int kv_dim() const override { return kv_dim_; }
  int capacity() const override { return capacity_; }

  // View of `layer` for [begin, begin + num_tokens). The range must lie in
  // [0, capacity) (checked in debug builds).
  KvLayerView View(int layer, int begin, int num_tokens);

  float* key(int layer, int pos) {
    return keys_[layer].data() + static_cast<size_t>(pos) * kv_dim_;
  }
  float* value(int layer, int pos) {
    return values_[layer].data() + static_cast<size_t>(pos) * kv_dim_;
  }
  const float* key(int layer, int pos) const {
    return keys_[layer].data() + static_cast<size_t>(pos) * kv_dim_;
  }
  const float* value(int layer, int pos) const {
    return values_[layer].data() + static_cast<size_t>(pos) * kv_dim_;
  }

  // Bytes of K+V for `num_tokens` tokens of one layer.
  size_t LayerBytes(int num_tokens) const {
    return 2 * sizeof(float) * static_cast<size_t>(num_tokens) * kv_dim_;
  }

  // BackendKvCache: see backend_kv_cache.h.
  absl::StatusOr<KvLayerView> StageRows(int layer, int begin, int num_tokens) override;
  absl::Status CommitRows(const KvLayerView& staged) override;
  absl::Status WriteRows(int layer, int begin, int num_tokens, DType dtype, const void* keys,
                         const void* values) override;
  absl::Status WaitForWrites() override { return absl::OkStatus(); }
  absl::Status ReadRows(int layer, int begin, int num_tokens, float* keys,
                        float* values) const override;
  const KvCache* host_cache() const override { return this; }

 private:
  KvCache() = default;
  int n_layers_ = 0;
  int kv_dim_ = 0;
  int capacity_ = 0;
  std::vector<AlignedBuffer<float>> keys_;
  std::vector<AlignedBuffer<float>> values_;
};

}  // namespace krul

#endif  // KRUL_ENGINE_KV_CACHE_H_
