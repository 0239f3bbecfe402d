// The pinned host KV store and its KvSource (see
// krul/restore/cuda/host_kv_store_cuda.h).
#include "krul/restore/cuda/host_kv_store_cuda.h"

#include <algorithm>
#include <cstring>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "krul/base/status_macros.h"
#include "krul/engine/cuda/cuda_util.h"

namespace krul {
namespace {

constexpr size_t kNormBytesPerHead = 4 * sizeof(float);  // |K_a| |K_b| |V_a| |V_b|

// Fills `bytes` at `dst` by repeating `tile`.
void FillTiled(uint8_t* dst, size_t bytes, const std::vector<uint8_t>& tile) {
  for (size_t off = 0; off < bytes; off += tile.size()) {
    std::memcpy(dst + off, tile.data(), std::min(tile.size(), bytes - off));
  }
}

std::vector<uint8_t> RandomTile(DType dtype, size_t elements, float lo, float hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> values(elements);
  for (float& v : values) v = dist(rng);
  std::vector<uint8_t> out(elements * DTypeSize(dtype));
  ConvertFromFp32(values.data(), dtype, out.data(), elements);
  return out;
}

class HostKvSource final : public KvSource {
 public:
  explicit HostKvSource(const CudaHostKvStore& store) : store_(store) {}

  absl::StatusOr<size_t> Fetch(std::span<const int> layers, int begin, int end,
                               BackendKvCache& cache) override {
    if (layers.empty() || layers.size() > 2) {
      return absl::InvalidArgumentError("a fetch names one layer or one shared pair");
    }
    if (begin < 0 || end > store_.max_tokens() || begin >= end) {
      return absl::InvalidArgumentError(absl::StrCat("token range [", begin, ", ", end,
                                                     ") is outside the store's ",
                                                     store_.max_tokens(), " tokens"));
    }
    for (int layer : layers) {
      if (layer < 0 || layer >= store_.n_layers()) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is out of range"));
      }
    }
    if (cache.kv_dim() != store_.kv_dim() || cache.n_layers() != store_.n_layers()) {
      return absl::InvalidArgumentError("the cache's shape differs from the store's");
    }
    const int n = end - begin;
    const size_t row = store_.row_bytes();
    if (layers.size() == 1) {
      const int layer = layers[0];
      KRUL_RETURN_IF_ERROR(cache.WriteRows(layer, begin, n, store_.dtype(),
                                           store_.plain_key(layer, begin),
                                           store_.plain_value(layer, begin)));
      return 2 * row * n;
    }
    MergedKvRows rows;
    rows.first = std::min(layers[0], layers[1]);
    rows.second = std::max(layers[0], layers[1]);
    if (!store_.has_merged(rows.first)) {
      return absl::InvalidArgumentError(
          absl::StrCat("the store has no merged rows for the pair of layer ", rows.first));
    }
    rows.begin = begin;
    rows.num_tokens = n;
    rows.n_kv_heads = store_.n_kv_heads();
    rows.dtype = store_.dtype();
    rows.key_dirs = store_.merged_key_dirs(rows.first, begin);
    rows.value_dirs = store_.merged_value_dirs(rows.first, begin);
    rows.norms = store_.merged_norms(rows.first, begin);
    KRUL_RETURN_IF_ERROR(cache.WriteMergedRows(rows));
    return (2 * row + store_.n_kv_heads() * kNormBytesPerHead) * n;
  }

 private:
  const CudaHostKvStore& store_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CudaHostKvStore>> CudaHostKvStore::Create(
    const CudaEngine& engine, int max_tokens, std::span<const int> merged_first_layers) {
  const ModelConfig& c = engine.config();
  if (max_tokens < 1) return absl::InvalidArgumentError("max_tokens must be >= 1");
  std::unique_ptr<CudaHostKvStore> store(new CudaHostKvStore());
  store->n_layers_ = c.n_layers;
  store->max_tokens_ = max_tokens;
  store->kv_dim_ = engine.local_kv_dim();
  store->n_kv_heads_ = engine.local_kv_heads();
  store->dtype_ = engine.dtype();
  store->row_bytes_ = static_cast<size_t>(store->kv_dim_) * DTypeSize(store->dtype_);
  store->plain_.resize(c.n_layers);
  store->merged_.resize(c.n_layers);
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(engine.device()));
  for (int l = 0; l < c.n_layers; ++l) {
    KRUL_ASSIGN_OR_RETURN(store->plain_[l],
                          CudaPinnedBuffer::Allocate(2 * store->row_bytes_ * max_tokens));
  }
  for (int l : merged_first_layers) {
    if (l < 0 || l >= c.n_layers) {
      return absl::InvalidArgumentError(absl::StrCat("merged layer ", l, " is out of range"));
    }
    if (store->merged_[l].data() != nullptr) continue;
    const size_t bytes = (2 * store->row_bytes_ + store->n_kv_heads_ * kNormBytesPerHead) *
                         static_cast<size_t>(max_tokens);
    KRUL_ASSIGN_OR_RETURN(store->merged_[l], CudaPinnedBuffer::Allocate(bytes));
  }
  return store;
}

size_t CudaHostKvStore::pinned_bytes() const {
  size_t total = 0;
  for (const auto& b : plain_) total += b.bytes();
  for (const auto& b : merged_) total += b.bytes();
  return total;
}

bool CudaHostKvStore::has_merged(int layer) const {
  return layer >= 0 && layer < n_layers_ && merged_[layer].data() != nullptr;
}

void* CudaHostKvStore::plain_key(int layer, int pos) const {
  return plain_[layer].as<uint8_t>() + static_cast<size_t>(pos) * row_bytes_;
}
void* CudaHostKvStore::plain_value(int layer, int pos) const {
  return plain_[layer].as<uint8_t>() + (static_cast<size_t>(max_tokens_) + pos) * row_bytes_;
}
void* CudaHostKvStore::merged_key_dirs(int layer, int pos) const {
  return merged_[layer].as<uint8_t>() + static_cast<size_t>(pos) * row_bytes_;
}
void* CudaHostKvStore::merged_value_dirs(int layer, int pos) const {
  return merged_[layer].as<uint8_t>() + (static_cast<size_t>(max_tokens_) + pos) * row_bytes_;
}
float* CudaHostKvStore::merged_norms(int layer, int pos) const {
  uint8_t* base = merged_[layer].as<uint8_t>() + 2 * static_cast<size_t>(max_tokens_) * row_bytes_;
  return reinterpret_cast<float*>(base) + static_cast<size_t>(pos) * n_kv_heads_ * 4;
}

absl::Status CudaHostKvStore::CopyPlainFromCache(const BackendKvCache& cache, int n) {
  if (cache.n_layers() != n_layers_ || cache.kv_dim() != kv_dim_) {
    return absl::InvalidArgumentError("the cache's shape differs from the store's");
  }
  if (n < 0 || n > max_tokens_ || n > cache.capacity()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot copy ", n, " tokens"));
  }
  const size_t count = static_cast<size_t>(n) * kv_dim_;
  std::vector<float> keys(count), values(count);
  for (int l = 0; l < n_layers_; ++l) {
    KRUL_RETURN_IF_ERROR(cache.ReadRows(l, 0, n, keys.data(), values.data()));
    ConvertFromFp32(keys.data(), dtype_, plain_key(l, 0), count);
    ConvertFromFp32(values.data(), dtype_, plain_value(l, 0), count);
  }
  return absl::OkStatus();
}

void CudaHostKvStore::FillPattern(uint64_t seed, int threads) {
  // Random 1 MiB tiles repeated: cheap for tens of GB, and never zeros.
  const size_t tile_elems = (size_t{1} << 20) / DTypeSize(dtype_);
  const std::vector<uint8_t> values = RandomTile(dtype_, tile_elems, -1.0f, 1.0f, seed);
  const std::vector<uint8_t> norms = RandomTile(DType::kF32, size_t{1} << 18, 0.5f, 1.5f, seed + 1);
  std::vector<std::pair<uint8_t*, size_t>> jobs;  // (region, bytes) with `values`
  std::vector<std::pair<uint8_t*, size_t>> norm_jobs;
  for (const auto& b : plain_) jobs.emplace_back(b.as<uint8_t>(), b.bytes());
  for (const auto& b : merged_) {
    if (b.data() == nullptr) continue;
    const size_t dirs = 2 * row_bytes_ * static_cast<size_t>(max_tokens_);
    jobs.emplace_back(b.as<uint8_t>(), dirs);
    norm_jobs.emplace_back(b.as<uint8_t>() + dirs, b.bytes() - dirs);
  }
  const int n_threads = std::max(1, threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < n_threads; ++t) {
    pool.emplace_back([&, t] {
      for (size_t i = t; i < jobs.size(); i += n_threads)
        FillTiled(jobs[i].first, jobs[i].second, values);
      for (size_t i = t; i < norm_jobs.size(); i += n_threads) {
        FillTiled(norm_jobs[i].first, norm_jobs[i].second, norms);
      }
    });
  }
  for (std::thread& th : pool) th.join();
}

std::unique_ptr<KvSource> CudaHostKvStore::NewSource() const {
  return std::make_unique<HostKvSource>(*this);
}

}  // namespace krul
