// The Llama forward pass on a CUDA GPU (see krul/engine/cuda/engine_cuda.h). The layer
// is the CPU engine's (engine_cpu.cc) with two fusions that save launches
// and passes over memory:
//  - q, k and v come from one GEMM against the stacked [Wq; Wk; Wv], and the
//    RoPE kernel scatters them into the query buffer and the KV cache;
//  - gate and up come from one GEMM against [W1; W3], and the output
//    projections accumulate straight into the fp32 residual stream
//    (cuBLAS beta = 1), so "x += W h" is one GEMM.
#include "krul/engine/cuda/engine_cuda.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels.h"
#include "krul/engine/cuda/cuda_util.h"
#include "krul/engine/cuda/tensor_parallel.h"

namespace krul {
namespace {

namespace kern = cuda_kernels;
using cuda_internal::CudaDataType;

// Activations in device memory.
class CudaActivations final : public ActivationBuffer {
 public:
  CudaActivations(CudaDeviceBuffer buffer, int rows) : buffer_(std::move(buffer)), rows_(rows) {}
  float* data() override { return buffer_.as<float>(); }
  int rows() const override { return rows_; }

 private:
  CudaDeviceBuffer buffer_;
  const int rows_;
};

// An event on the compute stream (with timing).
class CudaMark final : public BackendMark {
 public:
  ~CudaMark() override {
    if (event != nullptr) (void)cudaEventDestroy(event);
  }
  cudaEvent_t event = nullptr;
};

// The CudaKvCache behind `cache`; INVALID_ARGUMENT for another backend's.
absl::StatusOr<CudaKvCache*> AsCudaCache(BackendKvCache& cache) {
  auto* cuda = dynamic_cast<CudaKvCache*>(&cache);
  if (cuda == nullptr) {
    return absl::InvalidArgumentError(
        "the KV cache belongs to another backend (not a CudaKvCache)");
  }
  return cuda;
}

// One rank's slice of the model.
struct Shard {
  int rank = 0;
  int world = 1;
  int heads = 0;     // query heads
  int kv_heads = 0;  // KV heads
  int q_dim = 0;     // heads * head_size
  int kv_dim = 0;    // kv_heads * head_size
  int hidden = 0;    // hidden units
};

struct LayerBuffers {
  CudaDeviceBuffer rms_att;  // (dim) fp32
  CudaDeviceBuffer rms_ffn;  // (dim) fp32
  CudaDeviceBuffer wqkv;     // (q_dim + 2 kv_dim, dim) dtype
  CudaDeviceBuffer wo;       // (dim, q_dim) dtype
  CudaDeviceBuffer w13;      // (2 hidden, dim) dtype: w1 rows, then w3 rows
  CudaDeviceBuffer w2;       // (dim, hidden) dtype
};

absl::StatusOr<Shard> MakeShard(const ModelConfig& c, const CudaEngineOptions& options) {
  Shard s;
  if (options.tp != nullptr) {
    s.rank = options.tp->rank();
    s.world = options.tp->world();
  }
  if (s.world < 1 || s.rank < 0 || s.rank >= s.world) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad tensor-parallel rank ", s.rank, " of ", s.world));
  }
  if (c.n_heads % s.world != 0 || c.n_kv_heads % s.world != 0 || c.hidden_dim % s.world != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "heads (", c.n_heads, "), KV heads (", c.n_kv_heads, ") and hidden_dim (", c.hidden_dim,
        ") must be multiples of the tensor-parallel world size ", s.world));
  }
  s.heads = c.n_heads / s.world;
  s.kv_heads = c.n_kv_heads / s.world;
  s.q_dim = s.heads * c.head_size();
  s.kv_dim = s.kv_heads * c.head_size();
  s.hidden = c.hidden_dim / s.world;
  return s;
}

// Rows [row0, row0 + rows) of a (?, cols) row-major matrix.
void AppendRows(const float* m, int cols, int row0, int rows, std::vector<float>& out) {
  out.insert(out.end(), m + static_cast<size_t>(row0) * cols,
             m + static_cast<size_t>(row0 + rows) * cols);
}

// Columns [col0, col0 + n) of every row of a (rows, cols) row-major matrix.
void AppendColumns(const float* m, int rows, int cols, int col0, int n, std::vector<float>& out) {
  for (int r = 0; r < rows; ++r) {
    const float* row = m + static_cast<size_t>(r) * cols + col0;
    out.insert(out.end(), row, row + n);
  }
}

absl::StatusOr<CudaDeviceBuffer> Upload(DType dtype, const float* src, size_t count) {
  auto buffer = CudaDeviceBuffer::Allocate(count * DTypeSize(dtype));
  if (!buffer.ok()) return buffer.status();
  if (dtype == DType::kF32) {
    KRUL_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(buffer->data(), src, count * sizeof(float), cudaMemcpyHostToDevice));
  } else {
    std::vector<uint8_t> converted(count * DTypeSize(dtype));
    ConvertFromFp32(src, dtype, converted.data(), count);
    KRUL_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(buffer->data(), converted.data(), converted.size(), cudaMemcpyHostToDevice));
  }
  return buffer;
}

char* Offset(void* p, size_t elements, DType dtype) {
  return static_cast<char*>(p) + elements * DTypeSize(dtype);
}
const char* Offset(const void* p, size_t elements, DType dtype) {
  return static_cast<const char*>(p) + elements * DTypeSize(dtype);
}

}  // namespace

absl::Status CudaEngineOptions::Validate() const {
  if (device < 0) return absl::InvalidArgumentError("device must be >= 0");
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError("dtype must be f32, f16 or bf16");
  }
  if (max_block_tokens < 1) return absl::InvalidArgumentError("max_block_tokens must be >= 1");
  if (attention_scratch_bytes < (size_t{1} << 20)) {
    return absl::InvalidArgumentError("attention_scratch_bytes must be >= 1 MiB");
  }
  if (observer_query_block < 1) {
    return absl::InvalidArgumentError("observer_query_block must be >= 1");
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// CudaEngine::Impl

class CudaEngine::Impl {
 public:
  Impl(const ModelConfig& config, const CudaEngineOptions& options, const Shard& shard)
      : config_(config), options_(options), shard_(shard) {}

  ~Impl() {
    (void)cudaSetDevice(options_.device);
    if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
    if (side_ != nullptr) (void)cudaStreamSynchronize(side_);
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    for (cudaEvent_t e : {ready_[0], ready_[1], copied_[0], copied_[1]}) {
      if (e != nullptr) (void)cudaEventDestroy(e);
    }
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    if (side_ != nullptr) (void)cudaStreamDestroy(side_);
  }

  // Streams, cuBLAS, RoPE tables and scratch; weights come first.
  absl::Status Init() {
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamCreate(&stream_));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamCreate(&side_));
    for (cudaEvent_t* e : {&ready_[0], &ready_[1], &copied_[0], &copied_[1]}) {
      KRUL_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
    }
    KRUL_CUBLAS_RETURN_IF_ERROR(cublasCreate(&cublas_));
    KRUL_CUBLAS_RETURN_IF_ERROR(cublasSetStream(cublas_, stream_));
    // Default math: tensor cores for fp16/bf16 inputs, true fp32 for fp32.
    KRUL_CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));

    // RoPE angles pos * theta^(-2i / rotary_dim) in fp32, exactly as the CPU
    // engine (and llama2.c) computes them.
    const int half = config_.rotary_dim() / 2;
    std::vector<float> cos_table(static_cast<size_t>(config_.seq_len) * half);
    std::vector<float> sin_table(cos_table.size());
    for (int pos = 0; pos < config_.seq_len; ++pos) {
      for (int i = 0; i < half; ++i) {
        const float freq =
            1.0f / std::pow(config_.rope_theta,
                            static_cast<float>(2 * i) / static_cast<float>(config_.rotary_dim()));
        const float val = static_cast<float>(pos) * freq;
        cos_table[static_cast<size_t>(pos) * half + i] = std::cos(val);
        sin_table[static_cast<size_t>(pos) * half + i] = std::sin(val);
      }
    }
    auto c = Upload(DType::kF32, cos_table.data(), cos_table.size());
    if (!c.ok()) return c.status();
    rope_cos_ = std::move(*c);
    auto s = Upload(DType::kF32, sin_table.data(), sin_table.size());
    if (!s.ok()) return s.status();
    rope_sin_ = std::move(*s);

    block_ = std::min(options_.max_block_tokens, config_.seq_len);
    const size_t b = block_, es = DTypeSize(options_.dtype);
    KRUL_RETURN_IF_ERROR(Grow(xb_, b * config_.dim * es));
    KRUL_RETURN_IF_ERROR(Grow(qkv_, b * QkvCols() * es));
    KRUL_RETURN_IF_ERROR(Grow(q_, b * shard_.q_dim * es));
    KRUL_RETURN_IF_ERROR(Grow(att_, b * shard_.q_dim * es));
    KRUL_RETURN_IF_ERROR(Grow(gu_, b * 2 * shard_.hidden * es));
    KRUL_RETURN_IF_ERROR(Grow(hb_, b * shard_.hidden * es));
    KRUL_RETURN_IF_ERROR(Grow(hidden_, b * config_.dim * sizeof(float)));
    KRUL_RETURN_IF_ERROR(Grow(logits_, static_cast<size_t>(config_.vocab_size) * sizeof(float)));
    KRUL_RETURN_IF_ERROR(Grow(next_, sizeof(int)));
    KRUL_RETURN_IF_ERROR(Grow(ids_, b * sizeof(int)));
    return absl::OkStatus();
  }

  // ---- weights ----

  absl::Status UploadWeights(const Model& model) {
    const ModelConfig& c = config_;
    const DType dt = options_.dtype;
    const int dim = c.dim;
    layers_.resize(c.n_layers);
    for (int l = 0; l < c.n_layers; ++l) {
      const LayerWeights& w = model.layer(l);
      LayerBuffers& d = layers_[l];
      std::vector<float> m;
      KRUL_ASSIGN_OR_RETURN(d.rms_att, Upload(DType::kF32, w.rms_att, dim));
      KRUL_ASSIGN_OR_RETURN(d.rms_ffn, Upload(DType::kF32, w.rms_ffn, dim));
      AppendRows(w.wq, dim, shard_.rank * shard_.q_dim, shard_.q_dim, m);
      AppendRows(w.wk, dim, shard_.rank * shard_.kv_dim, shard_.kv_dim, m);
      AppendRows(w.wv, dim, shard_.rank * shard_.kv_dim, shard_.kv_dim, m);
      KRUL_ASSIGN_OR_RETURN(d.wqkv, Upload(dt, m.data(), m.size()));
      m.clear();
      AppendColumns(w.wo, dim, c.n_heads * c.head_size(), shard_.rank * shard_.q_dim, shard_.q_dim,
                    m);
      KRUL_ASSIGN_OR_RETURN(d.wo, Upload(dt, m.data(), m.size()));
      m.clear();
      AppendRows(w.w1, dim, shard_.rank * shard_.hidden, shard_.hidden, m);
      AppendRows(w.w3, dim, shard_.rank * shard_.hidden, shard_.hidden, m);
      KRUL_ASSIGN_OR_RETURN(d.w13, Upload(dt, m.data(), m.size()));
      m.clear();
      AppendColumns(w.w2, dim, c.hidden_dim, shard_.rank * shard_.hidden, shard_.hidden, m);
      KRUL_ASSIGN_OR_RETURN(d.w2, Upload(dt, m.data(), m.size()));
    }
    KRUL_ASSIGN_OR_RETURN(
        embedding_, Upload(dt, model.token_embedding(), static_cast<size_t>(c.vocab_size) * dim));
    KRUL_ASSIGN_OR_RETURN(rms_final_, Upload(DType::kF32, model.rms_final(), dim));
    if (model.classifier() != model.token_embedding()) {
      KRUL_ASSIGN_OR_RETURN(
          classifier_, Upload(dt, model.classifier(), static_cast<size_t>(c.vocab_size) * dim));
    }
    return absl::OkStatus();
  }

  absl::Status DrawWeights(uint64_t seed) {
    const ModelConfig& c = config_;
    const DType dt = options_.dtype;
    const size_t dim = c.dim;
    uint64_t tensor = 0;
    // A distinct stream of numbers per tensor (and per rank's shard).
    auto next_seed = [&] {
      return seed * 0x100000001b3ull + (++tensor) * 0x9e3779b97f4a7c15ull +
             static_cast<uint64_t>(shard_.rank) * 0xd1b54a32d192ed03ull;
    };
    auto uniform = [&](CudaDeviceBuffer& buf, DType type, size_t count,
                       size_t fan_in) -> absl::Status {
      auto b = CudaDeviceBuffer::Allocate(count * DTypeSize(type));
      if (!b.ok()) return b.status();
      buf = std::move(*b);
      const float scale = std::sqrt(3.0f / static_cast<float>(fan_in));
      KRUL_CUDA_RETURN_IF_ERROR(
          kern::FillUniform(type, buf.data(), count, next_seed(), scale, stream_));
      return absl::OkStatus();
    };
    auto ones = [&](CudaDeviceBuffer& buf, size_t count) -> absl::Status {
      auto b = CudaDeviceBuffer::Allocate(count * sizeof(float));
      if (!b.ok()) return b.status();
      buf = std::move(*b);
      KRUL_CUDA_RETURN_IF_ERROR(kern::FillConstant(DType::kF32, buf.data(), count, 1.0f, stream_));
      return absl::OkStatus();
    };
    layers_.resize(c.n_layers);
    for (LayerBuffers& d : layers_) {
      KRUL_RETURN_IF_ERROR(ones(d.rms_att, dim));
      KRUL_RETURN_IF_ERROR(ones(d.rms_ffn, dim));
      KRUL_RETURN_IF_ERROR(uniform(d.wqkv, dt, QkvCols() * dim, dim));
      KRUL_RETURN_IF_ERROR(uniform(d.wo, dt, dim * shard_.q_dim, c.n_heads * c.head_size()));
      KRUL_RETURN_IF_ERROR(uniform(d.w13, dt, 2 * static_cast<size_t>(shard_.hidden) * dim, dim));
      KRUL_RETURN_IF_ERROR(uniform(d.w2, dt, dim * shard_.hidden, c.hidden_dim));
    }
    KRUL_RETURN_IF_ERROR(uniform(embedding_, dt, static_cast<size_t>(c.vocab_size) * dim, 3));
    KRUL_RETURN_IF_ERROR(ones(rms_final_, dim));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return absl::OkStatus();
  }

  size_t WeightBytes() const {
    size_t total = embedding_.bytes() + rms_final_.bytes() + classifier_.bytes();
    for (const LayerBuffers& d : layers_) {
      total += d.rms_att.bytes() + d.rms_ffn.bytes() + d.wqkv.bytes() + d.wo.bytes() +
               d.w13.bytes() + d.w2.bytes();
    }
    return total;
  }

  // ---- accessors ----

  const ModelConfig& config() const { return config_; }
  const CudaEngineOptions& options() const { return options_; }
  const Shard& shard() const { return shard_; }
  cudaStream_t stream() const { return stream_; }
  bool has_observer() const { return observer_ != nullptr; }

  // ---- the forward pass ----

  absl::Status Embed(std::span<const int> tokens, float* hidden) {
    if (tokens.empty()) return absl::InvalidArgumentError("no tokens to embed");
    if (hidden == nullptr) return absl::InvalidArgumentError("hidden is null");
    for (size_t t = 0; t < tokens.size(); ++t) {
      if (tokens[t] < 0 || tokens[t] >= config_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", tokens[t], " at index ", t, " is outside [0, ", config_.vocab_size, ")"));
      }
    }
    KRUL_RETURN_IF_ERROR(Grow(ids_, tokens.size() * sizeof(int)));
    // From pageable memory: the caller's span may be reused once this returns.
    KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
        ids_.data(), tokens.data(), tokens.size() * sizeof(int), cudaMemcpyHostToDevice, stream_));
    KRUL_CUDA_RETURN_IF_ERROR(kern::Embed(options_.dtype, embedding_.data(), ids_.as<int>(),
                                          static_cast<int>(tokens.size()), config_.dim, hidden,
                                          stream_));
    return absl::OkStatus();
  }

  absl::Status CheckCache(const CudaKvCache& cache, int start_pos, int num_tokens) const {
    if (cache.n_layers() != config_.n_layers || cache.kv_dim() != shard_.kv_dim ||
        cache.dtype() != options_.dtype || cache.device() != options_.device) {
      return absl::InvalidArgumentError(absl::StrCat(
          "KV cache (layers=", cache.n_layers(), ", kv_dim=", cache.kv_dim(),
          ", dtype=", std::string(DTypeName(cache.dtype())), ", device=", cache.device(),
          ") does not match the engine (", config_.n_layers, ", ", shard_.kv_dim, ", ",
          std::string(DTypeName(options_.dtype)), ", ", options_.device, ")"));
    }
    if (num_tokens < 1) return absl::InvalidArgumentError("no tokens to process");
    if (start_pos < 0 || static_cast<int64_t>(start_pos) + num_tokens > cache.capacity()) {
      return absl::InvalidArgumentError(
          absl::StrCat("positions [", start_pos, ", ", static_cast<int64_t>(start_pos) + num_tokens,
                       ") exceed the KV cache capacity of ", cache.capacity(), " tokens"));
    }
    return absl::OkStatus();
  }

  absl::Status ComputeLayer(int layer, CudaKvCache& cache, int start_pos, int num_tokens,
                            float* hidden) {
    if (layer < 0 || layer >= config_.n_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", layer, " is outside [0, ", config_.n_layers, ")"));
    }
    KRUL_RETURN_IF_ERROR(CheckCache(cache, start_pos, num_tokens));
    if (hidden == nullptr) return absl::InvalidArgumentError("hidden is null");
    const LayerBuffers& w = layers_[layer];
    const ModelConfig& c = config_;
    const DType dt = options_.dtype;
    const int dim = c.dim, half = c.rotary_dim() / 2;
    // Rank 0 adds its partial output to the residual; the others contribute
    // theirs alone, and the all-reduce sums them all.
    const float residual_beta = shard_.rank == 0 ? 1.0f : 0.0f;
    for (int b0 = 0; b0 < num_tokens; b0 += block_) {
      const int n = std::min(block_, num_tokens - b0);
      const int pos0 = start_pos + b0;
      float* x = hidden + static_cast<size_t>(b0) * dim;  // (n, dim) residual stream

      // Attention: xb = rmsnorm(x); qkv = xb [Wq; Wk; Wv]^T; RoPE; k, v -> cache.
      KRUL_CUDA_RETURN_IF_ERROR(
          kern::RmsNorm(dt, x, w.rms_att.as<float>(), n, dim, c.norm_eps, xb_.data(), stream_));
      KRUL_RETURN_IF_ERROR(Linear(xb_.data(), n, dim, w.wqkv.data(), QkvCols(), qkv_.data(),
                                  /*out_f32=*/false, 0.0f));
      KRUL_CUDA_RETURN_IF_ERROR(kern::RopeScatter(
          dt, qkv_.data(), QkvCols(), n, shard_.heads, shard_.kv_heads, c.head_size(),
          c.rotary_dim(), rope_cos_.as<float>() + static_cast<size_t>(pos0) * half,
          rope_sin_.as<float>() + static_cast<size_t>(pos0) * half, q_.data(),
          cache.key(layer, pos0), cache.value(layer, pos0), stream_));
      KRUL_RETURN_IF_ERROR(Attention(layer, cache, pos0, n));
      KRUL_RETURN_IF_ERROR(Linear(att_.data(), n, shard_.q_dim, w.wo.data(), dim, x,
                                  /*out_f32=*/true, residual_beta));
      KRUL_RETURN_IF_ERROR(AllReduce(x, static_cast<size_t>(n) * dim));

      // Feed-forward: x += W2 (silu(W1 xb) * W3 xb), xb = rmsnorm(x).
      KRUL_CUDA_RETURN_IF_ERROR(
          kern::RmsNorm(dt, x, w.rms_ffn.as<float>(), n, dim, c.norm_eps, xb_.data(), stream_));
      KRUL_RETURN_IF_ERROR(Linear(xb_.data(), n, dim, w.w13.data(), 2 * shard_.hidden, gu_.data(),
                                  /*out_f32=*/false, 0.0f));
      KRUL_CUDA_RETURN_IF_ERROR(
          kern::SwiGlu(dt, gu_.data(), n, shard_.hidden, hb_.data(), stream_));
      KRUL_RETURN_IF_ERROR(Linear(hb_.data(), n, shard_.hidden, w.w2.data(), dim, x,
                                  /*out_f32=*/true, residual_beta));
      KRUL_RETURN_IF_ERROR(AllReduce(x, static_cast<size_t>(n) * dim));
    }
    return absl::OkStatus();
  }

  absl::Status ComputeLogits(const float* hidden, int num_rows, float* logits) {
    if (hidden == nullptr || logits == nullptr || num_rows < 1) {
      return absl::InvalidArgumentError("ComputeLogits needs rows and an output");
    }
    const ModelConfig& c = config_;
    const void* classifier = classifier_.data() != nullptr ? classifier_.data() : embedding_.data();
    for (int r0 = 0; r0 < num_rows; r0 += block_) {
      const int n = std::min(block_, num_rows - r0);
      KRUL_CUDA_RETURN_IF_ERROR(
          kern::RmsNorm(options_.dtype, hidden + static_cast<size_t>(r0) * c.dim,
                        rms_final_.as<float>(), n, c.dim, c.norm_eps, xb_.data(), stream_));
      KRUL_RETURN_IF_ERROR(Linear(xb_.data(), n, c.dim, classifier, c.vocab_size,
                                  logits + static_cast<size_t>(r0) * c.vocab_size,
                                  /*out_f32=*/true, 0.0f));
    }
    return absl::OkStatus();
  }

  enum class LogitsMode { kNone, kLast, kAll };

  // Runs `tokens` through every layer. kLast leaves the last token's logits
  // in logits_ (device); kAll copies every token's into host `all_logits`.
  absl::Status Run(CudaKvCache& cache, std::span<const int> tokens, int start_pos, LogitsMode mode,
                   float* all_logits) {
    const int n = static_cast<int>(tokens.size());
    KRUL_RETURN_IF_ERROR(CheckCache(cache, start_pos, n));
    const size_t vocab = config_.vocab_size;
    if (mode == LogitsMode::kAll) {
      KRUL_RETURN_IF_ERROR(Grow(all_logits_, static_cast<size_t>(block_) * vocab * sizeof(float)));
    }
    // Blocks go through every layer before the next starts, so the residual
    // stream needs one block of memory (as in the CPU engine).
    for (int b0 = 0; b0 < n; b0 += block_) {
      const int nb = std::min(block_, n - b0);
      float* hidden = hidden_.as<float>();
      KRUL_RETURN_IF_ERROR(Embed(tokens.subspan(b0, nb), hidden));
      for (int l = 0; l < config_.n_layers; ++l) {
        KRUL_RETURN_IF_ERROR(ComputeLayer(l, cache, start_pos + b0, nb, hidden));
      }
      if (mode == LogitsMode::kAll) {
        KRUL_RETURN_IF_ERROR(ComputeLogits(hidden, nb, all_logits_.as<float>()));
        // Into pageable host memory: returns once the copy is done.
        KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(all_logits + static_cast<size_t>(b0) * vocab,
                                                  all_logits_.data(), nb * vocab * sizeof(float),
                                                  cudaMemcpyDeviceToHost, stream_));
      } else if (mode == LogitsMode::kLast && b0 + nb == n) {
        KRUL_RETURN_IF_ERROR(ComputeLogits(hidden + static_cast<size_t>(nb - 1) * config_.dim, 1,
                                           logits_.as<float>()));
      }
    }
    return absl::OkStatus();
  }

  absl::Status Forward(CudaKvCache& cache, std::span<const int> tokens, int start_pos,
                       std::span<float> logits) {
    const size_t n = tokens.size(), vocab = config_.vocab_size;
    const bool all = logits.size() == n * vocab && n > 1;
    if (!logits.empty() && logits.size() != vocab && !all) {
      return absl::InvalidArgumentError(absl::StrCat(
          "logits span holds ", logits.size(), " floats; expected 0, ", vocab, " or ", n * vocab));
    }
    const LogitsMode mode =
        all ? LogitsMode::kAll : (logits.empty() ? LogitsMode::kNone : LogitsMode::kLast);
    absl::Status s = Run(cache, tokens, start_pos, mode, all ? logits.data() : nullptr);
    if (s.ok() && mode == LogitsMode::kLast) {
      s = CudaStatus(cudaMemcpyAsync(logits.data(), logits_.data(), vocab * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_),
                     "copying logits to the host");
    }
    absl::Status sync = Synchronize();
    return s.ok() ? sync : s;
  }

  absl::StatusOr<int> ForwardNext(CudaKvCache& cache, std::span<const int> tokens, int start_pos,
                                  const CudaSampling& sampling) {
    if (!(sampling.temperature >= 0.0f) || !std::isfinite(sampling.temperature)) {
      return absl::InvalidArgumentError("temperature must be finite and >= 0");
    }
    if (sampling.temperature > 0.0f && !(sampling.uniform >= 0.0f && sampling.uniform < 1.0f)) {
      return absl::InvalidArgumentError("uniform must be in [0, 1)");
    }
    absl::Status s = Run(cache, tokens, start_pos, LogitsMode::kLast, nullptr);
    if (s.ok()) {
      const cudaError_t e =
          sampling.temperature == 0.0f
              ? kern::Argmax(logits_.as<float>(), config_.vocab_size, next_.as<int>(), stream_)
              : kern::SampleFromLogits(logits_.as<float>(), config_.vocab_size,
                                       sampling.temperature, sampling.uniform, next_.as<int>(),
                                       stream_);
      s = CudaStatus(e, "picking the next token");
    }
    int next = -1;
    if (s.ok()) {
      s = CudaStatus(
          cudaMemcpyAsync(&next, next_.data(), sizeof(int), cudaMemcpyDeviceToHost, stream_),
          "copying the next token to the host");
    }
    absl::Status sync = Synchronize();
    if (!s.ok()) return s;
    if (!sync.ok()) return sync;
    return next;
  }

  // ---- observers ----

  absl::Status SetObserver(AttentionObserver* observer) {
    FlushPending();
    observer_ = observer;
    device_observer_ = dynamic_cast<CudaAttentionObserver*>(observer);
    return TakeDeferred();
  }

  // Host logits (num_rows, vocab) of device rows: ComputeLogits into
  // device scratch, then a copy into pageable host memory (which returns
  // once the copy, and all work before it, is done).
  absl::Status HostLogits(const float* hidden, int num_rows, std::span<float> logits) {
    const size_t vocab = config_.vocab_size;
    if (hidden == nullptr || num_rows < 1 || logits.size() != num_rows * vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("ComputeLogits needs rows and num_rows * vocab_size (", vocab,
                       ") logits; got ", num_rows, " rows and ", logits.size(), " floats"));
    }
    float* device_logits = logits_.as<float>();
    if (num_rows > 1) {
      KRUL_RETURN_IF_ERROR(Grow(all_logits_, num_rows * vocab * sizeof(float)));
      device_logits = all_logits_.as<float>();
    }
    absl::Status s = ComputeLogits(hidden, num_rows, device_logits);
    if (s.ok()) {
      s = CudaStatus(cudaMemcpyAsync(logits.data(), device_logits, logits.size() * sizeof(float),
                                     cudaMemcpyDeviceToHost, stream_),
                     "copying logits to the host");
    }
    absl::Status sync = Synchronize();
    return s.ok() ? sync : s;
  }

  absl::Status Synchronize() {
    FlushPending();
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(side_));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return TakeDeferred();
  }

 private:
  // An observer block copied (or being copied) into pinned_[buffer].
  struct Pending {
    int buffer = 0;
    AttentionWeights weights;
  };

  // Columns of the fused projection output: q | k | v of this rank.
  int QkvCols() const { return shard_.q_dim + 2 * shard_.kv_dim; }

  // Makes `buffer` hold at least `bytes`, reallocating (after the streams
  // are idle: the old memory may still be read) with some slack.
  absl::Status Grow(CudaDeviceBuffer& buffer, size_t bytes) {
    if (buffer.bytes() >= bytes) return absl::OkStatus();
    if (stream_ != nullptr) KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    if (side_ != nullptr) KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(side_));
    const size_t grown = std::max(bytes, buffer.bytes() + buffer.bytes() / 2);
    buffer = CudaDeviceBuffer();  // free first: lower peak memory
    auto fresh = CudaDeviceBuffer::Allocate(grown);
    if (!fresh.ok()) return fresh.status();
    buffer = std::move(*fresh);
    return absl::OkStatus();
  }

  // Y (rows, out) = X (rows, in) W^T [+ beta Y]; W is (out, in) dtype, X is
  // dtype, Y is fp32 (out_f32) or dtype. Row-major operands are the column-
  // major transposes cuBLAS sees: Y^T = W X^T, i.e. op(A) = W^T^T.
  absl::Status Linear(const void* x, int rows, int in, const void* w, int out, void* y,
                      bool out_f32, float beta) {
    const cudaDataType_t t = CudaDataType(options_.dtype);
    const float alpha = 1.0f;
    KRUL_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(
        cublas_, CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, &alpha, w, t, in, x, t, in, &beta, y,
        out_f32 ? CUDA_R_32F : t, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return absl::OkStatus();
  }

  absl::Status AllReduce(float* x, size_t count) {
    if (options_.tp == nullptr || shard_.world == 1) return absl::OkStatus();
    return options_.tp->AllReduceSum(x, count, stream_);
  }

  // Attention of q_ (n, q_dim) at positions [pos0, pos0 + n) into att_.
  absl::Status Attention(int layer, const CudaKvCache& cache, int pos0, int n) {
    const ModelConfig& c = config_;
    const int hs = c.head_size();
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    if (options_.attention == CudaAttentionImpl::kFused && observer_ == nullptr &&
        kern::FusedAttentionSupports(hs)) {
      KRUL_CUDA_RETURN_IF_ERROR(
          kern::FusedAttention(options_.dtype, q_.data(), shard_.q_dim, cache.key(layer, 0),
                               cache.value(layer, 0), shard_.kv_dim, n, pos0, shard_.heads,
                               shard_.kv_heads, hs, scale, att_.data(), shard_.q_dim, stream_));
      return absl::OkStatus();
    }
    return GemmAttention(layer, cache, pos0, n, scale);
  }

  // Scores S_h = scale Q_h K_g^T (cuBLAS, fp32 out), CausalSoftmax, then
  // O_h = P_h V_g (cuBLAS), over query chunks. Query head h = g * group + j
  // reads KV head g; for a fixed j the heads g * group + j form a strided
  // batch over g (Q stride group * hs, K/V stride hs, S stride group * nq *
  // ctx), so each product is `group` batched calls.
  absl::Status GemmAttention(int layer, const CudaKvCache& cache, int pos0, int n, float scale) {
    const ModelConfig& c = config_;
    const DType dt = options_.dtype;
    const cudaDataType_t t = CudaDataType(dt);
    const int hs = c.head_size(), heads = shard_.heads, kv_heads = shard_.kv_heads;
    const int group = heads / kv_heads;
    const int ctx_end = pos0 + n;
    const bool f32 = dt == DType::kF32;
    const size_t elem_bytes = sizeof(float) + (f32 ? 0 : DTypeSize(dt));
    const size_t per_query = static_cast<size_t>(heads) * ctx_end * elem_bytes;
    int qc = static_cast<int>(std::clamp<size_t>(options_.attention_scratch_bytes / per_query, 1,
                                                 static_cast<size_t>(n)));
    const bool observed = observer_ != nullptr;
    if (observed) qc = std::min(qc, options_.observer_query_block);
    const size_t score_elems = static_cast<size_t>(heads) * qc * ctx_end;
    KRUL_RETURN_IF_ERROR(Grow(scores_[0], score_elems * sizeof(float)));
    if (observed) {
      KRUL_RETURN_IF_ERROR(Grow(scores_[1], score_elems * sizeof(float)));
      KRUL_RETURN_IF_ERROR(GrowPinned(score_elems * sizeof(float)));
    }
    if (!f32) KRUL_RETURN_IF_ERROR(Grow(probs_, score_elems * DTypeSize(dt)));
    const void* keys = cache.key(layer, 0);
    const void* values = cache.value(layer, 0);
    const float one = 1.0f, zero = 0.0f;
    for (int q0 = 0; q0 < n; q0 += qc) {
      const int nq = std::min(qc, n - q0);
      const int qb = pos0 + q0, ctx = qb + nq;
      const int buffer = observed ? next_buffer_ : 0;
      if (observed) {
        // The side stream may still be copying this buffer's previous block.
        KRUL_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(stream_, copied_[buffer], 0));
      }
      float* scores = scores_[buffer].as<float>();
      void* probs = f32 ? static_cast<void*>(scores) : probs_.data();
      const long long s_stride = static_cast<long long>(group) * nq * ctx;
      for (int j = 0; j < group; ++j) {
        KRUL_CUBLAS_RETURN_IF_ERROR(cublasGemmStridedBatchedEx(
            cublas_, CUBLAS_OP_T, CUBLAS_OP_N, ctx, nq, hs, &scale, keys, t, shard_.kv_dim, hs,
            Offset(q_.data(), static_cast<size_t>(q0) * shard_.q_dim + j * hs, dt), t, shard_.q_dim,
            static_cast<long long>(group) * hs, &zero, scores + static_cast<size_t>(j) * nq * ctx,
            CUDA_R_32F, ctx, s_stride, kv_heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      }
      KRUL_CUDA_RETURN_IF_ERROR(
          kern::CausalSoftmax(dt, scores, heads, nq, ctx, qb, f32 ? nullptr : probs, stream_));
      for (int j = 0; j < group; ++j) {
        KRUL_CUBLAS_RETURN_IF_ERROR(cublasGemmStridedBatchedEx(
            cublas_, CUBLAS_OP_N, CUBLAS_OP_N, hs, nq, ctx, &one, values, t, shard_.kv_dim, hs,
            Offset(probs, static_cast<size_t>(j) * nq * ctx, dt), t, ctx, s_stride, &zero,
            Offset(att_.data(), static_cast<size_t>(q0) * shard_.q_dim + j * hs, dt), t,
            shard_.q_dim, static_cast<long long>(group) * hs, kv_heads, CUBLAS_COMPUTE_32F,
            CUBLAS_GEMM_DEFAULT));
      }
      if (observed) {
        AttentionWeights w;
        w.layer = layer;
        w.n_heads = heads;
        w.query_begin = qb;
        w.num_queries = nq;
        w.context_len = ctx;
        w.probs = scores;
        KRUL_RETURN_IF_ERROR(Observe(w, buffer));
      }
    }
    return absl::OkStatus();
  }

  absl::Status GrowPinned(size_t bytes) {
    if (pinned_[0].bytes() >= bytes) return absl::OkStatus();
    FlushPending();  // nothing may still be copied into or read from them
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(side_));
    for (CudaPinnedBuffer& p : pinned_) {
      p = CudaPinnedBuffer();
      auto fresh = CudaPinnedBuffer::Allocate(bytes);
      if (!fresh.ok()) return fresh.status();
      p = std::move(*fresh);
    }
    return absl::OkStatus();
  }

  // Offers a block to the observer on the device; otherwise copies it to
  // pinned memory on the side stream and delivers the previous block.
  absl::Status Observe(AttentionWeights w, int buffer) {
    if (device_observer_ != nullptr && device_observer_->OnDeviceAttention(w, stream_)) {
      return absl::OkStatus();
    }
    const size_t bytes =
        static_cast<size_t>(w.n_heads) * w.num_queries * w.context_len * sizeof(float);
    KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(ready_[buffer], stream_));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(side_, ready_[buffer], 0));
    KRUL_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(pinned_[buffer].data(), w.probs, bytes, cudaMemcpyDeviceToHost, side_));
    KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(copied_[buffer], side_));
    w.probs = pinned_[buffer].as<float>();
    pending_.push_back(Pending{buffer, w});
    next_buffer_ = buffer ^ 1;
    while (pending_.size() > 1) DeliverFront();
    return absl::OkStatus();
  }

  void DeliverFront() {
    const Pending p = pending_.front();
    pending_.pop_front();
    const cudaError_t e = cudaEventSynchronize(copied_[p.buffer]);
    if (e != cudaSuccess) {
      if (deferred_.ok()) deferred_ = CudaStatus(e, "copying attention weights to the host");
      return;
    }
    if (observer_ != nullptr) observer_->OnAttention(p.weights);
  }

  void FlushPending() {
    while (!pending_.empty()) DeliverFront();
  }

  absl::Status TakeDeferred() {
    absl::Status s = deferred_;
    deferred_ = absl::OkStatus();
    return s;
  }

  const ModelConfig config_;
  const CudaEngineOptions options_;
  const Shard shard_;
  int block_ = 1;

  cudaStream_t stream_ = nullptr;  // all compute
  cudaStream_t side_ = nullptr;    // observer copies to the host
  cublasHandle_t cublas_ = nullptr;

  std::vector<LayerBuffers> layers_;
  CudaDeviceBuffer embedding_;            // (vocab, dim) dtype
  CudaDeviceBuffer rms_final_;            // (dim) fp32
  CudaDeviceBuffer classifier_;           // (vocab, dim) dtype; empty when shared with embedding_
  CudaDeviceBuffer rope_cos_, rope_sin_;  // (seq_len, rotary_dim / 2) fp32

  // Scratch for one block of block_ tokens.
  CudaDeviceBuffer xb_;          // (block, dim) dtype: normalized input
  CudaDeviceBuffer qkv_;         // (block, q_dim + 2 kv_dim) dtype
  CudaDeviceBuffer q_;           // (block, q_dim) dtype: rotated queries
  CudaDeviceBuffer att_;         // (block, q_dim) dtype: attention output
  CudaDeviceBuffer gu_;          // (block, 2 hidden) dtype: gate | up
  CudaDeviceBuffer hb_;          // (block, hidden) dtype
  CudaDeviceBuffer hidden_;      // (block, dim) fp32: Forward's residual stream
  CudaDeviceBuffer logits_;      // (vocab) fp32
  CudaDeviceBuffer all_logits_;  // (block, vocab) fp32, on demand
  CudaDeviceBuffer next_;        // (1) int
  CudaDeviceBuffer ids_;         // token ids
  CudaDeviceBuffer scores_[2];   // (heads, chunk, ctx) fp32; [1] only with an observer
  CudaDeviceBuffer probs_;       // (heads, chunk, ctx) dtype (not for fp32)

  // Observer plumbing.
  AttentionObserver* observer_ = nullptr;
  CudaAttentionObserver* device_observer_ = nullptr;  // observer_, when it is one
  CudaPinnedBuffer pinned_[2];
  cudaEvent_t ready_[2] = {nullptr, nullptr};   // block computed (compute stream)
  cudaEvent_t copied_[2] = {nullptr, nullptr};  // block in pinned memory (side stream)
  std::deque<Pending> pending_;
  int next_buffer_ = 0;
  absl::Status deferred_;  // first error met while delivering
};

// ---------------------------------------------------------------------------
// CudaEngine

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::Create(const Model& model,
                                                               const CudaEngineOptions& options) {
  KRUL_RETURN_IF_ERROR(model.config().Validate());
  KRUL_RETURN_IF_ERROR(options.Validate());
  auto shard = MakeShard(model.config(), options);
  if (!shard.ok()) return shard.status();
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  auto impl = std::make_unique<Impl>(model.config(), options, *shard);
  KRUL_RETURN_IF_ERROR(impl->Init());
  KRUL_RETURN_IF_ERROR(impl->UploadWeights(model));
  return std::unique_ptr<CudaEngine>(new CudaEngine(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::CreateSynthetic(
    const ModelConfig& config, uint64_t seed, const CudaEngineOptions& options) {
  KRUL_RETURN_IF_ERROR(config.Validate());
  KRUL_RETURN_IF_ERROR(options.Validate());
  auto shard = MakeShard(config, options);
  if (!shard.ok()) return shard.status();
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  auto impl = std::make_unique<Impl>(config, options, *shard);
  KRUL_RETURN_IF_ERROR(impl->Init());
  KRUL_RETURN_IF_ERROR(impl->DrawWeights(seed));
  return std::unique_ptr<CudaEngine>(new CudaEngine(std::move(impl)));
}

CudaEngine::CudaEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaEngine::~CudaEngine() = default;

const ModelConfig& CudaEngine::config() const { return impl_->config(); }
const CudaEngineOptions& CudaEngine::options() const { return impl_->options(); }
int CudaEngine::device() const { return impl_->options().device; }
DType CudaEngine::dtype() const { return impl_->options().dtype; }
int CudaEngine::tp_rank() const { return impl_->shard().rank; }
int CudaEngine::tp_world() const { return impl_->shard().world; }
int CudaEngine::local_heads() const { return impl_->shard().heads; }
int CudaEngine::local_kv_heads() const { return impl_->shard().kv_heads; }
int CudaEngine::local_kv_dim() const { return impl_->shard().kv_dim; }
size_t CudaEngine::weight_bytes() const { return impl_->WeightBytes(); }
cudaStream_t CudaEngine::stream() const { return impl_->stream(); }
bool CudaEngine::has_observer() const { return impl_->has_observer(); }

absl::StatusOr<std::unique_ptr<BackendKvCache>> CudaEngine::CreateKvCache(int capacity_tokens) {
  KRUL_ASSIGN_OR_RETURN(CudaKvCache cache, CudaKvCache::Create(*this, capacity_tokens));
  return std::make_unique<CudaKvCache>(std::move(cache));
}

absl::StatusOr<std::unique_ptr<ActivationBuffer>> CudaEngine::CreateActivations(int rows) {
  if (rows < 1) return absl::InvalidArgumentError("activations need at least one row");
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  KRUL_ASSIGN_OR_RETURN(
      CudaDeviceBuffer buffer,
      CudaDeviceBuffer::Allocate(static_cast<size_t>(rows) * config().dim * sizeof(float)));
  return std::make_unique<CudaActivations>(std::move(buffer), rows);
}

absl::Status CudaEngine::Forward(BackendKvCache& cache, std::span<const int> tokens, int start_pos,
                                 std::span<float> logits) {
  KRUL_ASSIGN_OR_RETURN(CudaKvCache * cuda, AsCudaCache(cache));
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  return impl_->Forward(*cuda, tokens, start_pos, logits);
}

absl::StatusOr<int> CudaEngine::ForwardNext(BackendKvCache& cache, std::span<const int> tokens,
                                            int start_pos, const CudaSampling& sampling) {
  KRUL_ASSIGN_OR_RETURN(CudaKvCache * cuda, AsCudaCache(cache));
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  return impl_->ForwardNext(*cuda, tokens, start_pos, sampling);
}

absl::Status CudaEngine::Embed(std::span<const int> tokens, float* hidden) {
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  return impl_->Embed(tokens, hidden);
}

absl::Status CudaEngine::ComputeLayer(int layer, BackendKvCache& cache, int start_pos,
                                      int num_tokens, float* hidden) {
  KRUL_ASSIGN_OR_RETURN(CudaKvCache * cuda, AsCudaCache(cache));
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  return impl_->ComputeLayer(layer, *cuda, start_pos, num_tokens, hidden);
}

absl::Status CudaEngine::ComputeLogits(const float* hidden, int num_rows, std::span<float> logits) {
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  return impl_->HostLogits(hidden, num_rows, logits);
}

absl::Status CudaEngine::SetAttentionObserver(AttentionObserver* observer) {
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  return impl_->SetObserver(observer);
}

absl::Status CudaEngine::AwaitWrites(BackendKvCache& cache, int layer) {
  KRUL_ASSIGN_OR_RETURN(CudaKvCache * cuda, AsCudaCache(cache));
  if (cuda->device() != device()) {
    return absl::InvalidArgumentError("the KV cache is on another device");
  }
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  return cuda->OrderWritesBefore(layer, impl_->stream());
}

absl::Status CudaEngine::Synchronize() {
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  return impl_->Synchronize();
}

absl::StatusOr<std::unique_ptr<BackendMark>> CudaEngine::RecordMark() {
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  auto mark = std::make_unique<CudaMark>();
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventCreate(&mark->event));
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventRecord(mark->event, impl_->stream()));
  return mark;
}

absl::StatusOr<double> CudaEngine::SecondsBetween(const BackendMark& from, const BackendMark& to) {
  const auto* a = dynamic_cast<const CudaMark*>(&from);
  const auto* b = dynamic_cast<const CudaMark*>(&to);
  if (a == nullptr || b == nullptr) {
    return absl::InvalidArgumentError("SecondsBetween: a mark of another backend");
  }
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(device()));
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(b->event));
  float ms = 0.0f;
  KRUL_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, a->event, b->event));
  return ms * 1e-3;
}

}  // namespace krul
