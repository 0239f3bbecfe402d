// The Llama forward pass on the CPU (fp32): RMSNorm, RoPE, grouped-query
// attention with a causal mask, SwiGLU.
//
// Tokens are processed in blocks: a prefill of many tokens runs every
// projection as one matrix-matrix product; decode is a block of one. The
// pieces are exposed separately for the restore path, which recomputes one
// layer for a token range from given hidden states:
//
//   Embed(tokens) -> hidden (n, dim)
//   for each layer: ComputeLayer(layer, cache, start_pos, n, hidden)
//   ComputeLogits(last row of hidden) -> logits (vocab)
//
// Forward() does exactly that. An AttentionObserver, when set, receives every
// layer's attention probabilities (the similarity estimator); when none is
// set, no probabilities are kept beyond one row per thread.
//
// An Engine borrows its Model (which must outlive it) and owns scratch
// buffers: it is not thread-safe. Run one Engine per concurrent sequence;
// they may share one Model and one ThreadPool.
#ifndef KRUL_ENGINE_ENGINE_CPU_H_
#define KRUL_ENGINE_ENGINE_CPU_H_

#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/aligned_buffer.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"
#include "krul/base/thread_pool.h"

namespace krul {

// Attention probabilities of one layer for a block of consecutive queries.
struct AttentionWeights {
  int layer = 0;
  int n_heads = 0;      // query heads
  int query_begin = 0;  // absolute position of the first query
  int num_queries = 0;
  int context_len = 0;  // = query_begin + num_queries; keys are [0, context_len)
  // (n_heads, num_queries, context_len) row-major. Row (h, q) sums to 1 over
  // keys [0, query_begin + q] and is zero beyond (causal mask).
  const float* probs = nullptr;

  const float* row(int head, int query) const {
    return probs + (static_cast<size_t>(head) * num_queries + query) * context_len;
  }
};

// Receives attention probabilities while the engine runs. Called on the
// thread that called the engine, after each block of queries of each layer;
// the pointer is valid only during the call.
class AttentionObserver {
 public:
  virtual ~AttentionObserver() = default;
  virtual void OnAttention(const AttentionWeights& weights) = 0;

  // Optional. Called just before the engine computes a single-query block
  // (decode) of `layer` for the query at `position` (context_len =
  // position + 1): memory of at least n_heads * context_len floats for its
  // probabilities, or nullptr (the default) for the engine's own buffer.
  // The engine writes every float of it and passes it to the OnAttention
  // call that follows as `probs`; it keeps no pointer after that call. Lets
  // an observer that keeps the rows anyway skip copying them.
  virtual float* DecodeBuffer(int layer, int position, int n_heads, int context_len) {
    return nullptr;
  }
};

struct EngineOptions {
  // Threads for the data-parallel loops when the engine owns its pool
  // (0 = all hardware threads). Ignored when `pool` is set.
  int num_threads = 0;
  // A pool shared with other engines; not owned, must outlive the engine.
  ThreadPool* pool = nullptr;
  // Queries per block handed to an AttentionObserver; bounds the memory for
  // probabilities to n_heads * block * context floats.
  int observer_query_block = 64;
};

class Engine {
 public:
  // INVALID_ARGUMENT if the model's config does not validate.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Model& model,
                                                        const EngineOptions& options = {});
  ~Engine();

  const ModelConfig& config() const { return model_.config(); }
  const Model& model() const { return model_; }

  // Runs `tokens` at positions [start_pos, start_pos + n) through every layer,
  // writing their K/V into `cache`; attention sees cache positions
  // [0, start_pos + n), so [0, start_pos) must already be filled. `logits`
  // is empty (no logits), vocab_size floats (the last token's logits) or
  // n * vocab_size floats (every token's). INVALID_ARGUMENT for a token id
  // out of range, an empty token list, positions beyond the cache capacity
  // or a logits span of another size.
  absl::Status Forward(KvCache& cache, std::span<const int> tokens, int start_pos,
                       std::span<float> logits);

  // hidden (n, dim) = token embeddings of `tokens`.
  absl::Status Embed(std::span<const int> tokens, float* hidden) const;

  // Runs transformer block `layer` for tokens at [start_pos, start_pos + n):
  // reads their input hidden states from `hidden` (n, dim), writes their K/V
  // into `cache` and replaces `hidden` with the block's output. Same errors
  // as Forward.
  absl::Status ComputeLayer(int layer, KvCache& cache, int start_pos, int num_tokens,
                            float* hidden);

  // logits (vocab_size) of one hidden row (dim): final RMSNorm + classifier.
  void ComputeLogits(const float* hidden_row, float* logits);

  // Sets (or with nullptr clears) the observer. Not owned.
  void SetAttentionObserver(AttentionObserver* observer) { observer_ = observer; }

 private:
  Engine(const Model& model, const EngineOptions& options, std::unique_ptr<ThreadPool> owned);
  absl::Status CheckRange(const KvCache& cache, int start_pos, int num_tokens) const;
  void EnsureScratch(int num_tokens);
  void Attention(int layer, const KvCache& cache, int start_pos, int num_tokens);

  const Model& model_;
  EngineOptions options_;
  std::unique_ptr<ThreadPool> owned_pool_;
  ThreadPool* pool_;
  AttentionObserver* observer_ = nullptr;

  // Scratch for a block of `scratch_tokens_` tokens.
  int scratch_tokens_ = 0;
  AlignedBuffer<float> xb_;    // (n, dim) normalized input
  AlignedBuffer<float> q_;     // (n, dim) queries
  AlignedBuffer<float> att_;   // (n, dim) attention output
  AlignedBuffer<float> proj_;  // (n, dim) wo / w2 output
  AlignedBuffer<float> hb_;    // (n, hidden_dim) gate
  AlignedBuffer<float> hb2_;   // (n, hidden_dim) up
  AlignedBuffer<float> probs_;   // observer block probabilities
  AlignedBuffer<float> hidden_;  // (block, dim) residual stream of Forward()
  AlignedBuffer<float> rope_cos_;  // (seq_len, rotary_dim / 2)
  AlignedBuffer<float> rope_sin_;
};

}  // namespace krul

#endif  // KRUL_ENGINE_ENGINE_CPU_H_
