// The Llama forward pass on the CPU (fp32): RMSNorm, RoPE, grouped-query
// attention with a causal mask, SwiGLU. The "cpu" ComputeBackend
// (backend.h): every call computes before it returns, activations and KV
// caches (KvCache) live in host memory, and AwaitWrites does nothing.
//
// Tokens are processed in blocks: a prefill of many tokens runs every
// projection as one matrix-matrix product; decode is a block of one. An
// AttentionObserver, when set, receives every layer's attention
// probabilities (the similarity estimator); when none is set, no
// probabilities are kept beyond one row per thread.
//
// An Engine borrows its Model (which must outlive it) and owns scratch
// buffers: it is not thread-safe. Run one Engine per concurrent sequence;
// they may share one Model and one ThreadPool.
#ifndef KRUL_ENGINE_ENGINE_CPU_H_
#define KRUL_ENGINE_ENGINE_CPU_H_

#include <memory>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/aligned_buffer.h"
#include "krul/base/thread_pool.h"
#include "krul/engine/backend.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"

namespace krul {

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

class Engine final : public ComputeBackend {
 public:
  // INVALID_ARGUMENT if the model's config does not validate.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Model& model,
                                                        const EngineOptions& options = {});
  ~Engine() override;

  const Model& model() const { return model_; }

  // ComputeBackend (backend.h). Caches are KvCache (any KvCache of the
  // model's shape, also one not made by CreateKvCache); `hidden` is host
  // memory; ComputeLogits and the marks never fail for valid arguments.
  std::string_view name() const override { return "cpu"; }
  const ModelConfig& config() const override { return model_.config(); }
  absl::StatusOr<std::unique_ptr<BackendKvCache>> CreateKvCache(int capacity_tokens) override;
  absl::StatusOr<std::unique_ptr<ActivationBuffer>> CreateActivations(int rows) override;
  absl::Status Forward(BackendKvCache& cache, std::span<const int> tokens, int start_pos,
                       std::span<float> logits) override;
  absl::Status Embed(std::span<const int> tokens, float* hidden) override;
  absl::Status ComputeLayer(int layer, BackendKvCache& cache, int start_pos, int num_tokens,
                            float* hidden) override;
  absl::Status ComputeLogits(const float* hidden, int num_rows, std::span<float> logits) override;
  absl::Status SetAttentionObserver(AttentionObserver* observer) override;
  absl::Status AwaitWrites(BackendKvCache& cache, int layer) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }
  absl::StatusOr<std::unique_ptr<BackendMark>> RecordMark() override;
  absl::StatusOr<double> SecondsBetween(const BackendMark& from, const BackendMark& to) override;

 private:
  Engine(const Model& model, const EngineOptions& options, std::unique_ptr<ThreadPool> owned);
  // The KvCache behind `cache`, checked against the model and the range.
  absl::StatusOr<KvCache*> CheckRange(BackendKvCache& cache, int start_pos, int num_tokens) const;
  void EnsureScratch(int num_tokens);
  void Attention(int layer, const KvCache& cache, int start_pos, int num_tokens);
  // logits (vocab_size) of one hidden row (dim): final RMSNorm + classifier.
  void LogitsOfRow(const float* hidden_row, float* logits);

  const Model& model_;
  EngineOptions options_;
  std::unique_ptr<ThreadPool> owned_pool_;
  ThreadPool* pool_;
  AttentionObserver* observer_ = nullptr;

  // Scratch for a block of `scratch_tokens_` tokens.
  int scratch_tokens_ = 0;
  AlignedBuffer<float> xb_;        // (n, dim) normalized input
  AlignedBuffer<float> q_;         // (n, dim) queries
  AlignedBuffer<float> att_;       // (n, dim) attention output
  AlignedBuffer<float> proj_;      // (n, dim) wo / w2 output
  AlignedBuffer<float> hb_;        // (n, hidden_dim) gate
  AlignedBuffer<float> hb2_;       // (n, hidden_dim) up
  AlignedBuffer<float> probs_;     // observer block probabilities
  AlignedBuffer<float> hidden_;    // (block, dim) residual stream of Forward()
  AlignedBuffer<float> rope_cos_;  // (seq_len, rotary_dim / 2)
  AlignedBuffer<float> rope_sin_;
};

}  // namespace krul

#endif  // KRUL_ENGINE_ENGINE_CPU_H_
