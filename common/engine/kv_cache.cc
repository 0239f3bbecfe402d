#include "krul/engine/kv_cache.h"

#include <cassert>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "krul/base/status_macros.h"

namespace krul {

absl::StatusOr<KvCache> KvCache::Create(const ModelConfig& config, int capacity_tokens) {
  if (auto s = config.Validate(); !s.ok()) return s;
  if (capacity_tokens < 1 || capacity_tokens > config.seq_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache capacity ", capacity_tokens, " is outside [1, seq_len=", config.seq_len, "]"));
  }
  return Create(config.n_layers, config.kv_dim(), capacity_tokens);
}

absl::StatusOr<KvCache> KvCache::Create(int n_layers, int kv_dim, int capacity_tokens) {
  if (n_layers < 1 || kv_dim < 1 || capacity_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache shape (layers=", n_layers, ", kv_dim=", kv_dim,
                     ", capacity=", capacity_tokens, ") must be positive"));
  }
  KvCache cache;
  cache.n_layers_ = n_layers;
  cache.kv_dim_ = kv_dim;
  cache.capacity_ = capacity_tokens;
  const size_t per_layer = static_cast<size_t>(capacity_tokens) * kv_dim;
  cache.keys_.reserve(n_layers);
  cache.values_.reserve(n_layers);
  for (int l = 0; l < n_layers; ++l) {
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

absl::StatusOr<KvLayerView> KvCache::StageRows(int layer, int begin, int num_tokens) {
  KRUL_RETURN_IF_ERROR(CheckRows(layer, begin, num_tokens));
  // The cache's own rows: a source decodes straight into host memory.
  return View(layer, begin, num_tokens);
}

absl::Status KvCache::CommitRows(const KvLayerView& staged) {
  KRUL_RETURN_IF_ERROR(CheckRows(staged.layer, staged.begin, staged.num_tokens));
  if (staged.num_tokens > 0 && staged.keys != key(staged.layer, staged.begin)) {
    return absl::InvalidArgumentError("CommitRows: the view was not staged by this cache");
  }
  return absl::OkStatus();
}

absl::Status KvCache::WriteRows(int layer, int begin, int num_tokens, DType dtype, const void* keys,
                                const void* values) {
  KRUL_RETURN_IF_ERROR(CheckRows(layer, begin, num_tokens));
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError("WriteRows: unknown dtype");
  }
  const size_t count = static_cast<size_t>(num_tokens) * kv_dim_;
  ConvertToFp32(dtype, keys, key(layer, begin), count);
  ConvertToFp32(dtype, values, value(layer, begin), count);
  return absl::OkStatus();
}

absl::Status KvCache::ReadRows(int layer, int begin, int num_tokens, float* keys,
                               float* values) const {
  KRUL_RETURN_IF_ERROR(CheckRows(layer, begin, num_tokens));
  const size_t bytes = sizeof(float) * static_cast<size_t>(num_tokens) * kv_dim_;
  std::memcpy(keys, key(layer, begin), bytes);
  std::memcpy(values, value(layer, begin), bytes);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// BackendKvCache

absl::Status BackendKvCache::WriteMergedRows(const MergedKvRows&) {
  return absl::UnimplementedError("this KV cache has no merged-row fast path");
}

absl::Status BackendKvCache::CheckRows(int layer, int begin, int num_tokens) const {
  if (layer < 0 || layer >= n_layers() || begin < 0 || num_tokens < 0 ||
      static_cast<int64_t>(begin) + num_tokens > capacity()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", layer, " rows [", begin, ", ", static_cast<int64_t>(begin) + num_tokens,
        ") are outside the KV cache (", n_layers(), " layers, ", capacity(), " tokens)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<KvCache> CopyToHost(const BackendKvCache& cache, int num_tokens) {
  if (num_tokens < 1 || num_tokens > cache.capacity()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot copy ", num_tokens, " tokens of a KV cache of capacity ", cache.capacity()));
  }
  KRUL_ASSIGN_OR_RETURN(KvCache host,
                        KvCache::Create(cache.n_layers(), cache.kv_dim(), num_tokens));
  for (int l = 0; l < cache.n_layers(); ++l) {
    KRUL_RETURN_IF_ERROR(cache.ReadRows(l, 0, num_tokens, host.key(l, 0), host.value(l, 0)));
  }
  return host;
}

}  // namespace krul
