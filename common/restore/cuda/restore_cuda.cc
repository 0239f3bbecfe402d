// GPU restore executor and the device cost probe (see krul/cuda_restore.h).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "krul/engine/cuda/cuda_util.h"
#include "kernels.h"
#include "krul/restore/cuda/restore_cuda.h"

namespace krul {
namespace {

namespace kern = cuda_kernels;
using Clock = std::chrono::steady_clock;

constexpr size_t kNormBytesPerHead = 4 * sizeof(float);  // |K_a| |K_b| |V_a| |V_b|

double Seconds(cudaEvent_t from, cudaEvent_t to) {
  float ms = 0.0f;
  if (cudaEventElapsedTime(&ms, from, to) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0.0;
  }
  return ms * 1e-3;
}

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

}  // namespace

// ---------------------------------------------------------------------------
// CudaHostKvStore

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

absl::Status CudaHostKvStore::CopyPlainFromCache(const CudaKvCache& cache, int n) {
  if (cache.n_layers() != n_layers_ || cache.kv_dim() != kv_dim_ || cache.dtype() != dtype_) {
    return absl::InvalidArgumentError("the cache's shape or dtype differs from the store's");
  }
  if (n < 0 || n > max_tokens_ || n > cache.capacity()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot copy ", n, " tokens"));
  }
  for (int l = 0; l < n_layers_; ++l) {
    KRUL_RETURN_IF_ERROR(cache.CopyLayerToHost(l, 0, n, plain_key(l, 0), plain_value(l, 0)));
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

// ---------------------------------------------------------------------------
// CudaRestorer

class CudaRestorer::Impl {
 public:
  explicit Impl(CudaEngine& engine) : engine_(engine) {}

  ~Impl() {
    (void)cudaSetDevice(engine_.device());
    if (load_ != nullptr) (void)cudaStreamSynchronize(load_);
    for (cudaEvent_t e : {start_, recomputed_, loaded_, end_}) {
      if (e != nullptr) (void)cudaEventDestroy(e);
    }
    for (cudaEvent_t e : step_events_) (void)cudaEventDestroy(e);
    if (load_ != nullptr) (void)cudaStreamDestroy(load_);
  }

  absl::Status Init() {
    KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(engine_.device()));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamCreate(&load_));
    for (cudaEvent_t* e : {&start_, &recomputed_, &loaded_, &end_}) {
      KRUL_CUDA_RETURN_IF_ERROR(cudaEventCreate(e));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<CudaRestoreResult> Restore(const RestorePlan& plan,
                                            std::span<const int> history_tokens,
                                            std::span<const int> new_tokens,
                                            const CudaHostKvStore& store, CudaKvCache& cache,
                                            std::span<float> logits) {
    const Clock::time_point t0 = Clock::now();
    KRUL_RETURN_IF_ERROR(Check(plan, history_tokens, new_tokens, store, cache, logits));
    KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(engine_.device()));
    const ModelConfig& c = engine_.config();
    const int L = c.n_layers, N = plan.history_tokens, m = static_cast<int>(new_tokens.size());
    const size_t row = store.row_bytes();
    const size_t norm_row = store.n_kv_heads() * kNormBytesPerHead;

    // Buffers first: growing one waits for the streams.
    size_t staging = 0;
    for (const LoadStep& step : plan.loads) {
      if (step.write_layers.size() == 2) {
        staging =
            std::max(staging, (2 * row + norm_row) * static_cast<size_t>(step.end - step.begin));
      }
    }
    KRUL_RETURN_IF_ERROR(Grow(staging_, staging));
    KRUL_RETURN_IF_ERROR(Grow(
        history_hidden_, static_cast<size_t>(plan.recompute_tokens[0]) * c.dim * sizeof(float)));
    KRUL_RETURN_IF_ERROR(Grow(new_hidden_, static_cast<size_t>(m) * c.dim * sizeof(float)));
    KRUL_RETURN_IF_ERROR(Grow(logits_, static_cast<size_t>(c.vocab_size) * sizeof(float)));
    while (step_events_.size() < plan.loads.size()) {
      cudaEvent_t e = nullptr;
      KRUL_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      step_events_.push_back(e);
    }

    CudaRestoreResult result;
    cudaStream_t compute = engine_.stream();
    KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(start_, compute));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(load_, start_, 0));

    // The new input's embeddings depend on nothing: first, so the compute
    // stream never waits for the host later.
    float* new_hidden = new_hidden_.as<float>();
    if (m > 0) KRUL_RETURN_IF_ERROR(engine_.Embed(new_tokens, new_hidden));

    // Load stream: every step, an event after each.
    std::vector<int> ready_step(L, -1);
    bool any_load = false;
    for (size_t i = 0; i < plan.loads.size(); ++i) {
      const LoadStep& step = plan.loads[i];
      const int n = step.end - step.begin;
      if (n <= 0) continue;
      any_load = true;
      if (step.write_layers.size() == 2) {
        const int a = step.write_layers[0], b = step.write_layers[1];
        const int first = std::min(a, b), second = std::max(a, b);
        uint8_t* kdir = staging_.as<uint8_t>();
        uint8_t* vdir = kdir + row * n;
        float* norms = reinterpret_cast<float*>(vdir + row * n);
        KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(kdir, store.merged_key_dirs(first, step.begin),
                                                  row * n, cudaMemcpyHostToDevice, load_));
        KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(vdir, store.merged_value_dirs(first, step.begin),
                                                  row * n, cudaMemcpyHostToDevice, load_));
        KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(norms, store.merged_norms(first, step.begin),
                                                  norm_row * n, cudaMemcpyHostToDevice, load_));
        KRUL_CUDA_RETURN_IF_ERROR(kern::ExpandMergedPair(
            store.dtype(), kdir, vdir, norms, n, store.n_kv_heads(), store.head_dim(),
            cache.key(first, step.begin), cache.value(first, step.begin),
            cache.key(second, step.begin), cache.value(second, step.begin), load_));
        result.loaded_bytes += static_cast<int64_t>((2 * row + norm_row) * n);
      } else {
        for (int layer : step.write_layers) {
          KRUL_RETURN_IF_ERROR(
              cache.CopyLayerFromHostAsync(layer, step.begin, n, store.plain_key(layer, step.begin),
                                           store.plain_value(layer, step.begin), load_));
          result.loaded_bytes += static_cast<int64_t>(2 * row * n);
        }
      }
      KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(step_events_[i], load_));
      for (int layer : step.write_layers) ready_step[layer] = static_cast<int>(i);
    }
    KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(loaded_, load_));

    // Compute stream: R_0 .. R_{L-1}. The pyramid means layer l's input rows
    // [0, n_l) are a prefix of what layer l-1 produced.
    float* history_hidden = history_hidden_.as<float>();
    const int n0 = plan.recompute_tokens[0];
    if (n0 > 0) {
      KRUL_RETURN_IF_ERROR(engine_.Embed(history_tokens.first(n0), history_hidden));
      for (int l = 0; l < L; ++l) {
        const int nl = plan.recompute_tokens[l];
        if (nl == 0) break;
        KRUL_RETURN_IF_ERROR(engine_.ComputeLayer(l, cache, 0, nl, history_hidden));
        result.recomputed_token_layers += nl;
      }
    }
    KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(recomputed_, compute));

    // P_0 .. P_{L-1}, each after its layer's last load step.
    for (int l = 0; l < L; ++l) {
      if (ready_step[l] >= 0) {
        KRUL_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(compute, step_events_[ready_step[l]], 0));
      }
      if (m > 0) KRUL_RETURN_IF_ERROR(engine_.ComputeLayer(l, cache, N, m, new_hidden));
    }
    if (m > 0 && !logits.empty()) {
      KRUL_RETURN_IF_ERROR(engine_.ComputeLogits(new_hidden + static_cast<size_t>(m - 1) * c.dim, 1,
                                                 logits_.as<float>()));
    }
    KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(end_, compute));
    if (m > 0 && !logits.empty()) {
      // Into pageable memory: returns when the copy (and all before it) is done.
      KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits.data(), logits_.data(),
                                                logits.size() * sizeof(float),
                                                cudaMemcpyDeviceToHost, compute));
    }
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(compute));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(load_));
    result.ttft_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    result.recompute_seconds = n0 > 0 ? Seconds(start_, recomputed_) : 0.0;
    result.load_seconds = any_load ? Seconds(start_, loaded_) : 0.0;
    result.restored_seconds = std::max(result.recompute_seconds, result.load_seconds);
    result.device_seconds = Seconds(start_, end_);
    return result;
  }

 private:
  absl::Status Check(const RestorePlan& plan, std::span<const int> history_tokens,
                     std::span<const int> new_tokens, const CudaHostKvStore& store,
                     const CudaKvCache& cache, std::span<float> logits) const {
    const ModelConfig& c = engine_.config();
    const int L = c.n_layers, N = plan.history_tokens;
    if (engine_.has_observer()) {
      return absl::FailedPreconditionError("restore needs an engine without an observer");
    }
    if (engine_.tp_world() > 1) {
      return absl::FailedPreconditionError("CudaRestorer drives one tensor-parallel rank only");
    }
    if (plan.n_layers != L || static_cast<int>(plan.recompute_tokens.size()) != L) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan is for ", plan.n_layers, " layers; the model has ", L));
    }
    KRUL_RETURN_IF_ERROR(plan.layout.Validate(L));
    if (N < 0 || static_cast<int>(history_tokens.size()) != N) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan has ", N, " history tokens; given ", history_tokens.size()));
    }
    if (static_cast<int>(new_tokens.size()) != plan.new_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("plan has ", plan.new_tokens, " new tokens; given ", new_tokens.size()));
    }
    for (int l = 0; l < L; ++l) {
      const int nl = plan.recompute_tokens[l];
      if (nl < 0 || nl > N || (l > 0 && nl > plan.recompute_tokens[l - 1])) {
        return absl::InvalidArgumentError("recompute_tokens must be a pyramid within [0, N]");
      }
    }
    if (static_cast<int64_t>(N) + plan.new_tokens > cache.capacity()) {
      return absl::InvalidArgumentError("the cache cannot hold history plus new tokens");
    }
    if (store.n_layers() != L || store.kv_dim() != cache.kv_dim() ||
        store.dtype() != cache.dtype() || store.max_tokens() < N) {
      return absl::InvalidArgumentError(
          "the store does not match the cache or holds too few tokens");
    }
    if (!logits.empty() &&
        (plan.new_tokens == 0 || logits.size() != static_cast<size_t>(c.vocab_size))) {
      return absl::InvalidArgumentError(
          "logits must be empty or vocab_size floats (with new tokens)");
    }
    // Every step valid, and every layer's [n_l, N) covered by its steps.
    std::vector<std::vector<std::pair<int, int>>> covered(L);
    for (const LoadStep& step : plan.loads) {
      if (step.group < 0 || step.group >= static_cast<int>(plan.layout.groups.size()) ||
          step.begin < 0 || step.end > N || step.begin > step.end || step.write_layers.empty() ||
          step.write_layers.size() > 2) {
        return absl::InvalidArgumentError("a load step is out of range");
      }
      const std::vector<int>& members = plan.layout.groups[step.group].layers;
      for (int layer : step.write_layers) {
        if (std::find(members.begin(), members.end(), layer) == members.end()) {
          return absl::InvalidArgumentError("a load step writes a layer outside its group");
        }
        covered[layer].emplace_back(step.begin, step.end);
      }
      if (step.write_layers.size() == 2 &&
          !store.has_merged(std::min(step.write_layers[0], step.write_layers[1]))) {
        return absl::InvalidArgumentError("the store has no merged rows for a shared pair");
      }
    }
    for (int l = 0; l < L; ++l) {
      auto& ranges = covered[l];
      std::sort(ranges.begin(), ranges.end());
      int reach = plan.recompute_tokens[l];
      for (const auto& [b, e] : ranges) {
        if (b > reach) break;
        reach = std::max(reach, e);
      }
      if (reach < N) {
        return absl::InvalidArgumentError(absl::StrCat("layer ", l, " tokens [", reach, ", ", N,
                                                       ") are neither recomputed nor loaded"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status Grow(CudaDeviceBuffer& buffer, size_t bytes) {
    if (buffer.bytes() >= bytes) return absl::OkStatus();
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(engine_.stream()));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(load_));
    buffer = CudaDeviceBuffer();
    KRUL_ASSIGN_OR_RETURN(buffer, CudaDeviceBuffer::Allocate(bytes));
    return absl::OkStatus();
  }

  CudaEngine& engine_;
  cudaStream_t load_ = nullptr;
  cudaEvent_t start_ = nullptr, recomputed_ = nullptr, loaded_ = nullptr, end_ = nullptr;
  std::vector<cudaEvent_t> step_events_;
  CudaDeviceBuffer staging_;         // merged rows of one step: Kdir | Vdir | norms
  CudaDeviceBuffer history_hidden_;  // (n_0, dim) fp32
  CudaDeviceBuffer new_hidden_;      // (m, dim) fp32
  CudaDeviceBuffer logits_;          // (vocab) fp32
};

absl::StatusOr<std::unique_ptr<CudaRestorer>> CudaRestorer::Create(CudaEngine& engine) {
  auto impl = std::make_unique<Impl>(engine);
  KRUL_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<CudaRestorer>(new CudaRestorer(std::move(impl)));
}

CudaRestorer::CudaRestorer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaRestorer::~CudaRestorer() = default;

absl::StatusOr<CudaRestoreResult> CudaRestorer::Restore(
    const RestorePlan& plan, std::span<const int> history_tokens, std::span<const int> new_tokens,
    const CudaHostKvStore& store, CudaKvCache& cache, std::span<float> logits) {
  return impl_->Restore(plan, history_tokens, new_tokens, store, cache, logits);
}

// ---------------------------------------------------------------------------
// Device probes

absl::StatusOr<ComputeCoefficients> ProbeCudaCompute(CudaEngine& engine,
                                                     const ComputeProbeOptions& options) {
  const ModelConfig& c = engine.config();
  if (engine.has_observer()) {
    return absl::FailedPreconditionError("the compute probe needs an engine without an observer");
  }
  if (options.repeats < 1 || options.late_tokens < 1 || options.late_start < 0 ||
      options.layer < 0 || options.layer >= c.n_layers || options.token_counts.size() < 2) {
    return absl::InvalidArgumentError("ComputeProbeOptions out of range");
  }
  int longest = options.late_start + options.late_tokens;
  for (int n : options.token_counts) {
    if (n < 1) return absl::InvalidArgumentError("probe token counts must be >= 1");
    longest = std::max(longest, n);
  }
  if (longest > c.seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("the probe needs ", longest, " positions; seq_len is ", c.seq_len));
  }
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(engine.device()));
  auto cache = CudaKvCache::Create(engine, longest);
  if (!cache.ok()) return cache.status();
  auto hidden = CudaDeviceBuffer::Allocate(static_cast<size_t>(longest) * c.dim * sizeof(float));
  if (!hidden.ok()) return hidden.status();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> token(0, c.vocab_size - 1);
  std::vector<int> tokens(longest);
  for (int& t : tokens) t = token(rng);

  cudaEvent_t e0 = nullptr, e1 = nullptr;
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventCreate(&e0));
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventCreate(&e1));
  auto time_point = [&](int start, int n) -> absl::StatusOr<double> {
    double best = 0;
    for (int r = 0; r < options.repeats; ++r) {
      KRUL_RETURN_IF_ERROR(
          engine.Embed(std::span<const int>(tokens).first(n), hidden->as<float>()));
      KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(e0, engine.stream()));
      KRUL_RETURN_IF_ERROR(
          engine.ComputeLayer(options.layer, *cache, start, n, hidden->as<float>()));
      KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(e1, engine.stream()));
      KRUL_RETURN_IF_ERROR(engine.Synchronize());
      const double s = Seconds(e0, e1);
      best = r == 0 ? s : std::min(best, s);
    }
    return best;
  };
  std::vector<ComputeSample> samples;
  absl::Status status;
  // Real keys before the late block: run the prefix once (also a warm-up).
  if (auto warm = time_point(0, std::max(1, options.late_start)); !warm.ok())
    status = warm.status();
  for (int n : options.token_counts) {
    if (!status.ok()) break;
    auto s = time_point(0, n);
    if (!s.ok())
      status = s.status();
    else
      samples.push_back({0, n, *s});
  }
  if (status.ok()) {
    auto s = time_point(options.late_start, options.late_tokens);
    if (!s.ok())
      status = s.status();
    else
      samples.push_back({options.late_start, options.late_tokens, *s});
  }
  (void)cudaEventDestroy(e0);
  (void)cudaEventDestroy(e1);
  if (!status.ok()) return status;
  return FitComputeCoefficients(samples);
}

absl::StatusOr<LoadCoefficients> ProbeCudaLoad(const CudaEngine& engine, size_t bytes_per_token,
                                               const LoadProbeOptions& options) {
  if (bytes_per_token == 0) return absl::InvalidArgumentError("bytes_per_token must be > 0");
  if (options.large_tokens < 1 || options.small_tokens < 1) {
    return absl::InvalidArgumentError("LoadProbeOptions out of range");
  }
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(engine.device()));
  const size_t bytes = bytes_per_token * static_cast<size_t>(options.large_tokens);
  auto host = CudaPinnedBuffer::Allocate(bytes);
  if (!host.ok()) return host.status();
  auto device = CudaDeviceBuffer::Allocate(bytes);
  if (!device.ok()) return device.status();
  FillTiled(host->as<uint8_t>(), bytes, RandomTile(DType::kF32, 1 << 16, -1.0f, 1.0f, 99));
  cudaStream_t stream = nullptr;
  KRUL_CUDA_RETURN_IF_ERROR(cudaStreamCreate(&stream));
  auto fetch = [&](int tokens) -> absl::StatusOr<size_t> {
    const size_t total = bytes_per_token * static_cast<size_t>(tokens);
    const size_t half = total / 2;
    KRUL_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(device->data(), host->data(), half, cudaMemcpyHostToDevice, stream));
    KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device->as<uint8_t>() + half,
                                              host->as<uint8_t>() + half, total - half,
                                              cudaMemcpyHostToDevice, stream));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return total;
  };
  // A warm-up fetch first: the first copy pays for mapping the buffers.
  const absl::Status warm = fetch(options.large_tokens).status();
  absl::StatusOr<LoadCoefficients> result =
      warm.ok() ? ProbeLoad(fetch, options) : absl::StatusOr<LoadCoefficients>(warm);
  (void)cudaStreamDestroy(stream);
  return result;
}

}  // namespace krul
