// The Llama forward pass on the CPU, in the spirit of llama2.c's run.c: the
// whole block in one readable file, each buffer's shape written down. Unlike
// run.c, tokens move through a layer in blocks (prefill = matrix-matrix
// products) and attention probabilities can be handed to an observer.
#include "krul/engine/engine_cpu.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cpu_ops.h"
#include "krul/base/status_macros.h"
#include "matmul.h"

namespace krul {
namespace {

using internal::ApplyRope;
using internal::Dot;
using internal::RmsNorm;
using internal::Softmax;

// Tokens per block inside a layer: bounds scratch memory to a few block-sized
// buffers however long the prefill is.
constexpr int kMaxBlockTokens = 256;

// Multiply-adds below which attention for some (head, query) pairs is not
// worth handing to another thread.
constexpr int64_t kMinAttentionMacsPerTask = 16 * 1024;

// Attention of one query `q` (head_size) over keys/values rows [0, ctx) with
// row stride `kv_dim`: probs (ctx) = softmax(q . k_j * scale), out (head_size)
// = sum_j probs[j] * v_j. kHeadSize > 0 fixes head_size at compile time.
template <int kHeadSize>
void AttendOne(const float* q, const float* keys, const float* values, int kv_dim, int ctx,
               float scale, float* probs, float* out, int head_size) {
  const int hs = kHeadSize > 0 ? kHeadSize : head_size;
  for (int j = 0; j < ctx; ++j) {
    probs[j] = Dot(q, keys + static_cast<size_t>(j) * kv_dim, hs) * scale;
  }
  Softmax(probs, ctx);
  std::fill(out, out + hs, 0.0f);
  for (int j = 0; j < ctx; ++j) {
    internal::Axpy(out, probs[j], values + static_cast<size_t>(j) * kv_dim, hs);
  }
}

// Activations in host memory.
class CpuActivations final : public ActivationBuffer {
 public:
  CpuActivations(int rows, int dim) : rows_(rows), data_(static_cast<size_t>(rows) * dim) {}
  float* data() override { return data_.data(); }
  int rows() const override { return rows_; }

 private:
  const int rows_;
  AlignedBuffer<float> data_;
};

// The CPU's work is done when a call returns: a mark is the time it was taken.
class CpuMark final : public BackendMark {
 public:
  std::chrono::steady_clock::time_point time = std::chrono::steady_clock::now();
};

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Model& model,
                                                       const EngineOptions& options) {
  if (auto s = model.config().Validate(); !s.ok()) return s;
  if (options.observer_query_block < 1) {
    return absl::InvalidArgumentError("observer_query_block must be >= 1");
  }
  std::unique_ptr<ThreadPool> owned;
  if (options.pool == nullptr) owned = std::make_unique<ThreadPool>(options.num_threads);
  return std::unique_ptr<Engine>(new Engine(model, options, std::move(owned)));
}

Engine::Engine(const Model& model, const EngineOptions& options, std::unique_ptr<ThreadPool> owned)
    : model_(model),
      options_(options),
      owned_pool_(std::move(owned)),
      pool_(options.pool != nullptr ? options.pool : owned_pool_.get()) {
  // RoPE angles pos * theta^(-2i / rotary_dim), computed in fp32 exactly as
  // llama2.c does so that greedy outputs match it token for token.
  const ModelConfig& c = model_.config();
  const int half = c.rotary_dim() / 2;
  rope_cos_.Resize(static_cast<size_t>(c.seq_len) * half);
  rope_sin_.Resize(static_cast<size_t>(c.seq_len) * half);
  std::vector<float> freq(half);
  for (int i = 0; i < half; ++i) {
    freq[i] = 1.0f / std::pow(c.rope_theta,
                              static_cast<float>(2 * i) / static_cast<float>(c.rotary_dim()));
  }
  for (int pos = 0; pos < c.seq_len; ++pos) {
    for (int i = 0; i < half; ++i) {
      const float val = static_cast<float>(pos) * freq[i];
      rope_cos_[static_cast<size_t>(pos) * half + i] = std::cos(val);
      rope_sin_[static_cast<size_t>(pos) * half + i] = std::sin(val);
    }
  }
}

Engine::~Engine() = default;

void Engine::EnsureScratch(int num_tokens) {
  if (num_tokens <= scratch_tokens_) return;
  const ModelConfig& c = model_.config();
  const size_t n = num_tokens;
  xb_.Resize(n * c.dim);
  q_.Resize(n * c.dim);
  att_.Resize(n * c.dim);
  proj_.Resize(n * c.dim);
  hb_.Resize(n * c.hidden_dim);
  hb2_.Resize(n * c.hidden_dim);
  scratch_tokens_ = num_tokens;
}

absl::StatusOr<KvCache*> Engine::CheckRange(BackendKvCache& backend_cache, int start_pos,
                                            int num_tokens) const {
  const ModelConfig& c = model_.config();
  auto* cache = dynamic_cast<KvCache*>(&backend_cache);
  if (cache == nullptr) {
    return absl::InvalidArgumentError("the KV cache belongs to another backend (not a KvCache)");
  }
  if (cache->n_layers() != c.n_layers || cache->kv_dim() != c.kv_dim()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache shape (layers=", cache->n_layers(), ", kv_dim=", cache->kv_dim(),
        ") does not match the model (layers=", c.n_layers, ", kv_dim=", c.kv_dim(), ")"));
  }
  if (num_tokens < 1) return absl::InvalidArgumentError("no tokens to process");
  if (start_pos < 0 || static_cast<int64_t>(start_pos) + num_tokens > cache->capacity()) {
    return absl::InvalidArgumentError(
        absl::StrCat("positions [", start_pos, ", ", static_cast<int64_t>(start_pos) + num_tokens,
                     ") exceed the KV cache capacity of ", cache->capacity(), " tokens"));
  }
  return cache;
}

absl::StatusOr<std::unique_ptr<BackendKvCache>> Engine::CreateKvCache(int capacity_tokens) {
  KRUL_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(model_.config(), capacity_tokens));
  return std::make_unique<KvCache>(std::move(cache));
}

absl::StatusOr<std::unique_ptr<ActivationBuffer>> Engine::CreateActivations(int rows) {
  if (rows < 1) return absl::InvalidArgumentError("activations need at least one row");
  return std::make_unique<CpuActivations>(rows, model_.config().dim);
}

absl::Status Engine::SetAttentionObserver(AttentionObserver* observer) {
  observer_ = observer;
  return absl::OkStatus();
}

absl::Status Engine::AwaitWrites(BackendKvCache& cache, int layer) {
  // Writes into a KvCache are done when they return: nothing to order.
  if (dynamic_cast<KvCache*>(&cache) == nullptr) {
    return absl::InvalidArgumentError("the KV cache belongs to another backend (not a KvCache)");
  }
  if (layer < 0 || layer >= cache.n_layers()) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is outside the cache"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BackendMark>> Engine::RecordMark() {
  return std::make_unique<CpuMark>();
}

absl::StatusOr<double> Engine::SecondsBetween(const BackendMark& from, const BackendMark& to) {
  const auto* a = dynamic_cast<const CpuMark*>(&from);
  const auto* b = dynamic_cast<const CpuMark*>(&to);
  if (a == nullptr || b == nullptr) {
    return absl::InvalidArgumentError("SecondsBetween: a mark of another backend");
  }
  return std::chrono::duration<double>(b->time - a->time).count();
}

absl::Status Engine::Embed(std::span<const int> tokens, float* hidden) {
  const ModelConfig& c = model_.config();
  if (tokens.empty()) return absl::InvalidArgumentError("no tokens to embed");
  if (hidden == nullptr) return absl::InvalidArgumentError("hidden is null");
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[t], " at index ", t,
                                                     " is outside [0, ", c.vocab_size, ")"));
    }
    std::memcpy(hidden + t * c.dim,
                model_.token_embedding() + static_cast<size_t>(tokens[t]) * c.dim,
                sizeof(float) * c.dim);
  }
  return absl::OkStatus();
}

// Causal grouped-query attention of the queries in q_ (n, dim) at positions
// [start_pos, start_pos + n) over the cache, into att_ (n, dim).
void Engine::Attention(int layer, const KvCache& cache, int start_pos, int num_tokens) {
  const ModelConfig& c = model_.config();
  const int hs = c.head_size(), dim = c.dim, kv_dim = c.kv_dim();
  const int group = c.n_heads / c.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const float* keys = cache.key(layer, 0);
  const float* values = cache.value(layer, 0);

  // One (head, query) pair: scores into `probs` (ctx floats), softmax, then
  // the probability-weighted sum of values into att_. Common head sizes get
  // a compile-time length so the short per-key loops vectorize fully.
  auto attend = [&](int h, int t, float* probs) {
    const int ctx = start_pos + t + 1;
    const float* q = q_.data() + static_cast<size_t>(t) * dim + h * hs;
    const int kv_off = (h / group) * hs;
    float* out = att_.data() + static_cast<size_t>(t) * dim + h * hs;
    switch (hs) {
      case 8:
        AttendOne<8>(q, keys + kv_off, values + kv_off, kv_dim, ctx, scale, probs, out, hs);
        break;
      case 16:
        AttendOne<16>(q, keys + kv_off, values + kv_off, kv_dim, ctx, scale, probs, out, hs);
        break;
      case 32:
        AttendOne<32>(q, keys + kv_off, values + kv_off, kv_dim, ctx, scale, probs, out, hs);
        break;
      case 64:
        AttendOne<64>(q, keys + kv_off, values + kv_off, kv_dim, ctx, scale, probs, out, hs);
        break;
      case 128:
        AttendOne<128>(q, keys + kv_off, values + kv_off, kv_dim, ctx, scale, probs, out, hs);
        break;
      default:
        AttendOne<0>(q, keys + kv_off, values + kv_off, kv_dim, ctx, scale, probs, out, hs);
    }
  };

  // (head, query) pairs per thread hand-off: enough that each costs more than
  // waking a thread (~2 * context * head_size multiply-adds per pair).
  const int64_t pair_cost = 2 * static_cast<int64_t>(start_pos + num_tokens) * hs;
  const int64_t min_pairs = std::max<int64_t>(1, kMinAttentionMacsPerTask / pair_cost);
  if (observer_ == nullptr) {
    pool_->ParallelFor(
        static_cast<int64_t>(c.n_heads) * num_tokens,
        [&](int64_t b, int64_t e) {
          thread_local std::vector<float> row;
          if (row.size() < static_cast<size_t>(start_pos + num_tokens))
            row.resize(start_pos + num_tokens);
          for (int64_t i = b; i < e; ++i)
            attend(static_cast<int>(i % c.n_heads), static_cast<int>(i / c.n_heads), row.data());
        },
        min_pairs);
    return;
  }
  // With an observer, keep the block's probabilities (heads, queries, context)
  // and hand them over once per block of queries.
  const int block = options_.observer_query_block;
  for (int q0 = 0; q0 < num_tokens; q0 += block) {
    const int nq = std::min(block, num_tokens - q0);
    const int ctx_len = start_pos + q0 + nq;
    // A decode block may go straight into the observer's memory.
    float* probs =
        nq == 1 ? observer_->DecodeBuffer(layer, start_pos + q0, c.n_heads, ctx_len) : nullptr;
    if (probs == nullptr) {
      // Kept between calls (decode hands over one block per layer per token).
      const size_t block_floats = static_cast<size_t>(c.n_heads) * nq * ctx_len;
      if (probs_.size() < block_floats) probs_.Resize(block_floats);
      probs = probs_.data();
    }
    pool_->ParallelFor(
        static_cast<int64_t>(c.n_heads) * nq,
        [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) {
            const int h = static_cast<int>(i / nq), t = static_cast<int>(i % nq);
            float* row = probs + (static_cast<size_t>(h) * nq + t) * ctx_len;
            attend(h, q0 + t, row);
            // attend() wrote keys [0, ctx); the causal mask zeroes the rest of
            // the row (nothing for the block's last query, so nothing in decode).
            const int ctx = start_pos + q0 + t + 1;
            std::fill(row + ctx, row + ctx_len, 0.0f);
          }
        },
        min_pairs);
    AttentionWeights weights;
    weights.layer = layer;
    weights.n_heads = c.n_heads;
    weights.query_begin = start_pos + q0;
    weights.num_queries = nq;
    weights.context_len = ctx_len;
    weights.probs = probs;
    observer_->OnAttention(weights);
  }
}

absl::Status Engine::ComputeLayer(int layer, BackendKvCache& backend_cache, int start_pos,
                                  int num_tokens, float* hidden) {
  const ModelConfig& c = model_.config();
  if (layer < 0 || layer >= c.n_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " is outside [0, ", c.n_layers, ")"));
  }
  KRUL_ASSIGN_OR_RETURN(KvCache * checked, CheckRange(backend_cache, start_pos, num_tokens));
  if (hidden == nullptr) return absl::InvalidArgumentError("hidden is null");
  KvCache& cache = *checked;
  const LayerWeights& w = model_.layer(layer);
  const int dim = c.dim, kv_dim = c.kv_dim(), hidden_dim = c.hidden_dim, hs = c.head_size();
  const int half = c.rotary_dim() / 2;
  ThreadPool& pool = *pool_;

  // Blocks run in order, so a block's queries find every earlier position's
  // K/V already in the cache.
  for (int b0 = 0; b0 < num_tokens; b0 += kMaxBlockTokens) {
    const int n = std::min(kMaxBlockTokens, num_tokens - b0);
    const int pos0 = start_pos + b0;
    float* x = hidden + static_cast<size_t>(b0) * dim;  // (n, dim) residual stream
    EnsureScratch(n);

    // Attention: xb = rmsnorm(x); q, k, v projections (k, v straight into the cache).
    for (int t = 0; t < n; ++t)
      RmsNorm(xb_.data() + t * dim, x + t * dim, w.rms_att, dim, c.norm_eps);
    internal::MatMul(pool, xb_.data(), n, dim, w.wq, dim, q_.data());
    internal::MatMul(pool, xb_.data(), n, dim, w.wk, kv_dim, cache.key(layer, pos0));
    internal::MatMul(pool, xb_.data(), n, dim, w.wv, kv_dim, cache.value(layer, pos0));
    for (int t = 0; t < n; ++t) {
      const float* cos_row = rope_cos_.data() + static_cast<size_t>(pos0 + t) * half;
      const float* sin_row = rope_sin_.data() + static_cast<size_t>(pos0 + t) * half;
      ApplyRope(q_.data() + static_cast<size_t>(t) * dim, c.n_heads, hs, c.rotary_dim(), cos_row,
                sin_row);
      ApplyRope(cache.key(layer, pos0 + t), c.n_kv_heads, hs, c.rotary_dim(), cos_row, sin_row);
    }
    Attention(layer, cache, pos0, n);
    internal::MatMul(pool, att_.data(), n, dim, w.wo, dim, proj_.data());
    for (size_t i = 0; i < static_cast<size_t>(n) * dim; ++i) x[i] += proj_[i];

    // Feed-forward: x += w2(silu(w1(xb)) * w3(xb)), xb = rmsnorm(x).
    for (int t = 0; t < n; ++t)
      RmsNorm(xb_.data() + t * dim, x + t * dim, w.rms_ffn, dim, c.norm_eps);
    internal::MatMul(pool, xb_.data(), n, dim, w.w1, hidden_dim, hb_.data());
    internal::MatMul(pool, xb_.data(), n, dim, w.w3, hidden_dim, hb2_.data());
    internal::SwiGlu(hb_.data(), hb_.data(), hb2_.data(), static_cast<size_t>(n) * hidden_dim);
    internal::MatMul(pool, hb_.data(), n, hidden_dim, w.w2, dim, proj_.data());
    for (size_t i = 0; i < static_cast<size_t>(n) * dim; ++i) x[i] += proj_[i];
  }
  return absl::OkStatus();
}

void Engine::LogitsOfRow(const float* hidden_row, float* logits) {
  const ModelConfig& c = model_.config();
  EnsureScratch(1);
  RmsNorm(xb_.data(), hidden_row, model_.rms_final(), c.dim, c.norm_eps);
  internal::MatMul(*pool_, xb_.data(), 1, c.dim, model_.classifier(), c.vocab_size, logits);
}

absl::Status Engine::ComputeLogits(const float* hidden, int num_rows, std::span<float> logits) {
  const ModelConfig& c = model_.config();
  if (hidden == nullptr || num_rows < 1 ||
      logits.size() != static_cast<size_t>(num_rows) * c.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("ComputeLogits needs rows and num_rows * vocab_size (", c.vocab_size,
                     ") logits; got ", num_rows, " rows and ", logits.size(), " floats"));
  }
  for (int r = 0; r < num_rows; ++r) {
    LogitsOfRow(hidden + static_cast<size_t>(r) * c.dim,
                logits.data() + static_cast<size_t>(r) * c.vocab_size);
  }
  return absl::OkStatus();
}

absl::Status Engine::Forward(BackendKvCache& cache, std::span<const int> tokens, int start_pos,
                             std::span<float> logits) {
  const ModelConfig& c = model_.config();
  const int n = static_cast<int>(tokens.size());
  if (auto s = CheckRange(cache, start_pos, n).status(); !s.ok()) return s;
  const size_t vocab = c.vocab_size;
  const bool all_logits = logits.size() == static_cast<size_t>(n) * vocab && n > 1;
  if (!logits.empty() && logits.size() != vocab && !all_logits) {
    return absl::InvalidArgumentError(absl::StrCat("logits span holds ", logits.size(),
                                                   " floats; expected 0, ", vocab, " or ",
                                                   static_cast<size_t>(n) * vocab));
  }
  // Token blocks go through every layer before the next block starts, so the
  // residual stream never needs more than one block of memory.
  const size_t hidden_floats = static_cast<size_t>(std::min(n, kMaxBlockTokens)) * c.dim;
  if (hidden_.size() < hidden_floats) hidden_.Resize(hidden_floats);
  float* hidden = hidden_.data();
  for (int b0 = 0; b0 < n; b0 += kMaxBlockTokens) {
    const int nb = std::min(kMaxBlockTokens, n - b0);
    if (auto s = Embed(tokens.subspan(b0, nb), hidden); !s.ok()) return s;
    for (int l = 0; l < c.n_layers; ++l) {
      if (auto s = ComputeLayer(l, cache, start_pos + b0, nb, hidden); !s.ok()) return s;
    }
    if (all_logits) {
      for (int t = 0; t < nb; ++t)
        LogitsOfRow(hidden + static_cast<size_t>(t) * c.dim, logits.data() + (b0 + t) * vocab);
    } else if (!logits.empty() && b0 + nb == n) {
      LogitsOfRow(hidden + static_cast<size_t>(nb - 1) * c.dim, logits.data());
    }
  }
  return absl::OkStatus();
}

}  // namespace krul
