// The Llama forward pass on a CUDA GPU: the "cuda" ComputeBackend
// (krul/engine/backend.h), on device memory:
//
//   Embed(tokens) -> hidden (n, dim) fp32 on the device
//   for each layer: ComputeLayer(layer, cache, start_pos, n, hidden)
//   ComputeLogits(rows of hidden) -> host logits
//
// and Forward() does all of it from host token ids to host logits; caches
// are CudaKvCache (kv_cache_cuda.h), activations device memory.
//
// Precision. Weights and the KV cache are stored as options.dtype (bf16 by
// default; fp16; or fp32, which reproduces the CPU engine to rounding). The
// residual stream (hidden) and every reduction (RMSNorm, softmax, GEMM
// accumulation) are fp32; GEMM inputs are dtype. GEMMs run on cuBLAS
// (cublasGemmEx, fp32 compute; no TF32 for fp32). The own kernels are in
// common/engine/cuda/kernels/ (RMSNorm, RoPE, SwiGLU, attention, sampling).
//
// Attention. Prefill blocks use, by default (kAuto), cuBLAS for Q K^T and
// P V with a causal softmax kernel in between, over query chunks sized so
// the (heads, chunk, context) score buffer stays within
// options.attention_scratch_bytes: no buffer grows with context^2. kFused
// selects the own tiled kernel (online softmax, no score buffer at all) for
// head sizes 8..128 when no observer is set. Decode always takes the cuBLAS
// path (its one score row per head is what the estimator reads).
//
// Observers. An observer that is also a CudaAttentionObserver (e.g.
// CudaSimilarityEstimator) may consume a block's probabilities on the
// device, in stream order (the estimator's decode path); blocks it declines,
// and every block of a plain AttentionObserver, are copied on a side stream
// into pinned host memory and handed to OnAttention one block behind the
// computation (double-buffered), so the GPU does not wait for the host.
// Blocks are observer_query_block queries of one layer, like the CPU
// engine's.
//
// Synchronization. ComputeLayer and Embed only enqueue work on stream() and
// return; errors of the enqueued work surface at the next synchronizing call
// (Forward, ForwardNext, ComputeLogits, Synchronize). AwaitWrites makes the
// stream wait for a cache's transfer-stream writes to a layer (an event).
// Marks are CUDA events on stream(). After an INTERNAL error (e.g. an
// illegal address) the device context is unusable: destroy the engine.
//
// Tensor parallelism (options.tp, see tensor_parallel.h): rank r of W
// holds query heads [r H/W, (r+1) H/W), the matching KV heads and hidden
// units [r F/W, (r+1) F/W); wo and w2 are split by input columns and their
// partial outputs are summed with an NCCL all-reduce, so every rank ends
// each layer with the full residual stream. The classifier is replicated.
// A rank's cache holds its own KV heads (kv_dim = local_kv_dim()), so a
// Restorer, whose sources write whole-model rows, refuses it.
//
// An engine owns its weights, scratch and streams; it is not thread-safe.
// Several engines may share a device. Every public call makes the engine's
// device current on the calling thread.
#ifndef KRUL_ENGINE_CUDA_ENGINE_CUDA_H_
#define KRUL_ENGINE_CUDA_ENGINE_CUDA_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/base/dtype.h"
#include "krul/engine/backend.h"
#include "krul/engine/cuda/cuda_memory.h"
#include "krul/engine/cuda/kv_cache_cuda.h"
#include "krul/model/model.h"

namespace krul {

class CudaTpComm;  // tensor_parallel.h

enum class CudaAttentionImpl {
  kAuto,   // cuBLAS + softmax kernel, chunked (see above)
  kFused,  // own tiled kernel when possible, else as kAuto
  kGemm,   // always cuBLAS + softmax kernel
};

struct CudaEngineOptions {
  int device = 0;
  // Storage type of weights, KV cache and GEMM inputs.
  DType dtype = DType::kBF16;
  CudaAttentionImpl attention = CudaAttentionImpl::kAuto;
  // Tokens per block inside ComputeLayer / Forward; bounds the activation
  // scratch to a few (block, dim or hidden_dim) buffers. Default 1024.
  int max_block_tokens = 1024;
  // Bound on the prefill attention score buffers (bytes). Default 512 MiB.
  size_t attention_scratch_bytes = size_t{512} << 20;
  // Queries per block handed to observers. Default 64 (as the CPU engine).
  int observer_query_block = 64;
  // This rank's communicator; nullptr = world size 1. Not owned.
  CudaTpComm* tp = nullptr;

  // INVALID_ARGUMENT naming the field when out of range.
  absl::Status Validate() const;
};

// An AttentionObserver that can also consume a CudaEngine's blocks on the
// device. Set it with SetAttentionObserver like any observer; blocks it
// declines arrive through OnAttention in pinned host memory.
class CudaAttentionObserver : public AttentionObserver {
 public:
  // `weights.probs` is DEVICE memory, fp32 (n_heads, num_queries,
  // context_len) where n_heads is the engine's local_heads(); valid for work
  // enqueued on `stream` now, overwritten by later engine work. Return true
  // to consume the block (enqueue any device work on `stream`; never
  // synchronize), false to have it delivered by OnAttention instead.
  virtual bool OnDeviceAttention(const AttentionWeights& weights, cudaStream_t stream) = 0;
};

// How ForwardNext picks the token: temperature 0 = argmax (first index on
// ties); otherwise inverse-CDF sampling of softmax(logits / temperature)
// with the caller's uniform number in [0, 1) (nucleus filtering: copy the
// logits to the host and use krul::Sampler).
struct CudaSampling {
  float temperature = 0.0f;
  float uniform = 0.0f;
};

class CudaEngine final : public ComputeBackend {
 public:
  // Uploads `model` (converted to options.dtype; this rank's shard when
  // options.tp is set). The model may be destroyed afterwards.
  // INVALID_ARGUMENT for a bad config or options, or heads / hidden units
  // that do not split evenly over the ranks; device errors as CudaStatus.
  static absl::StatusOr<std::unique_ptr<CudaEngine>> Create(const Model& model,
                                                            const CudaEngineOptions& options = {});

  // A model of the given shape whose weights are drawn on the device from
  // `seed` (uniform, scaled by 1/sqrt(fan_in) like MakeSyntheticModel; not
  // the same numbers). Seconds for a 7B shape instead of minutes on the
  // host: for benchmarks. With options.tp, each rank draws its own shard.
  static absl::StatusOr<std::unique_ptr<CudaEngine>> CreateSynthetic(
      const ModelConfig& config, uint64_t seed, const CudaEngineOptions& options = {});

  ~CudaEngine() override;
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  // ---- ComputeBackend (backend.h) ----
  // Caches must be this engine's CudaKvCache (same device, dtype and local
  // KV heads); `hidden` is device memory. CreateKvCache is
  // CudaKvCache::Create. Device errors as CudaStatus.
  std::string_view name() const override { return "cuda"; }
  const ModelConfig& config() const override;  // the whole model
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
  absl::Status Synchronize() override;
  absl::StatusOr<std::unique_ptr<BackendMark>> RecordMark() override;
  absl::StatusOr<double> SecondsBetween(const BackendMark& from, const BackendMark& to) override;

  // ---- CUDA only ----
  const CudaEngineOptions& options() const;
  int device() const;
  DType dtype() const;
  int tp_rank() const;
  int tp_world() const;
  int local_heads() const;     // query heads on this rank
  int local_kv_heads() const;  // KV heads on this rank
  int local_kv_dim() const;    // local_kv_heads * head_size
  // Bytes of device memory held by weights.
  size_t weight_bytes() const;
  // The stream all compute is enqueued on.
  cudaStream_t stream() const;
  bool has_observer() const;

  // Forward, then picks the next token on the device from the last token's
  // logits (only 4 bytes come back). Same errors as Forward;
  // INVALID_ARGUMENT for a negative temperature or a uniform outside
  // [0, 1). Synchronizes.
  absl::StatusOr<int> ForwardNext(BackendKvCache& cache, std::span<const int> tokens, int start_pos,
                                  const CudaSampling& sampling = {});

 private:
  class Impl;
  explicit CudaEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace krul

#endif  // KRUL_ENGINE_CUDA_ENGINE_CUDA_H_
