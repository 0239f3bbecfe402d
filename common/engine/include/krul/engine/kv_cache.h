// Per-layer key/value cache of one sequence (conversation), fp32 on the CPU.
//
// Layout per layer: K and V are each (capacity_tokens, kv_dim) row-major, so
// a token range of one layer is one contiguous block, which is what the
// compressor and the KV store move around. The cache does not track which
// positions are valid: the engine writes positions [start, start + n) and the
// caller keeps the sequence length (the restore path fills ranges out of
// order).
//
// Not thread-safe; distinct layers may be written by distinct threads.
#ifndef KRUL_ENGINE_KV_CACHE_H_
#define KRUL_ENGINE_KV_CACHE_H_

#include <cstddef>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "krul/base/aligned_buffer.h"
#include "krul/model/model.h"

namespace krul {

// A view of one layer's K and V for tokens [begin, begin + num_tokens).
// Row t of `keys` / `values` is token begin + t; each row has kv_dim floats.
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

class KvCache {
 public:
  // A zeroed cache for `capacity_tokens` positions of a model with n_layers
  // layers and kv_dim = config.kv_dim(). INVALID_ARGUMENT when the capacity
  // is not in [1, config.seq_len].
  static absl::StatusOr<KvCache> Create(const ModelConfig& config, int capacity_tokens);

  int n_layers() const { return n_layers_; }
  int kv_dim() const { return kv_dim_; }
  int capacity() const { return capacity_; }

  // View of `layer` for [begin, begin + num_tokens). The range must lie in
  // [0, capacity) (checked in debug builds).
  KvLayerView View(int layer, int begin, int num_tokens);

  float* key(int layer, int pos) { return keys_[layer].data() + static_cast<size_t>(pos) * kv_dim_; }
  float* value(int layer, int pos) { return values_[layer].data() + static_cast<size_t>(pos) * kv_dim_; }
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
