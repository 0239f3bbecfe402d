#include "krul/engine/kv_cache.h"

#include <cassert>

#include "absl/strings/str_cat.h"

namespace krul {

absl::StatusOr<KvCache> KvCache::Create(const ModelConfig& config, int capacity_tokens) {
  if (auto s = config.Validate(); !s.ok()) return s;
  if (capacity_tokens < 1 || capacity_tokens > config.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache capacity ", capacity_tokens,
                                                   " is outside [1, seq_len=", config.seq_len,
                                                   "]"));
  }
  KvCache cache;
  cache.n_layers_ = config.n_layers;
  cache.kv_dim_ = config.kv_dim();
  cache.capacity_ = capacity_tokens;
  const size_t per_layer = static_cast<size_t>(capacity_tokens) * cache.kv_dim_;
  cache.keys_.reserve(config.n_layers);
  cache.values_.reserve(config.n_layers);
  for (int l = 0; l < config.n_layers; ++l) {
    cache.keys_.emplace_back(per_layer);
    cache.values_.emplace_back(per_layer);
  }
  return cache;
}

KvLayerView KvCache::View(int layer, int begin, int num_tokens) {
  assert(layer >= 0 && layer < n_layers_);
  assert(begin >= 0 && num_tokens >= 0 && begin + num_tokens <= capacity_);
  KvLayerView view;
  view.layer = layer;
  view.begin = begin;
  view.num_tokens = num_tokens;
  view.kv_dim = kv_dim_;
  view.keys = key(layer, begin);
  view.values = value(layer, begin);
  return view;
}

}  // namespace krul
