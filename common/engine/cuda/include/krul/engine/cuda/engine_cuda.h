// The Llama forward pass on a CUDA GPU: the CUDA backend of krul/engine.h.
//
// Same shape of API as the CPU Engine, on device memory:
//
//   Embed(tokens) -> hidden (n, dim) fp32 on the device
//   for each layer: ComputeLayer(layer, cache, start_pos, n, hidden)
//   ComputeLogits(rows of hidden) -> logits (fp32 on the device)
//
// and Forward() does all of it from host token ids to host logits.
//
// Precision. Weights and the KV cache are stored as options.dtype (bf16 by
// default; fp16; or fp32, which reproduces the CPU engine to rounding). The
// residual stream (hidden) and every reduction (RMSNorm, softmax, GEMM
// accumulation) are fp32; GEMM inputs are dtype. GEMMs run on cuBLAS
// (cublasGemmEx, fp32 compute; no TF32 for fp32). The own kernels are in
// common/cuda/kernels/ (RMSNorm, RoPE, SwiGLU, attention, sampling).
//
// Attention. Prefill blocks use, by default (kAuto), cuBLAS for Q K^T and
// P V with a causal softmax kernel in between, over query chunks sized so
// the (heads, chunk, context) score buffer stays within
// options.attention_scratch_bytes: no buffer grows with context^2. kFused
// selects the own tiled kernel (online softmax, no score buffer at all) for
// head sizes 8..128 when no observer is set. Decode always takes the cuBLAS
// path (its one score row per head is what the estimator reads).
//
// Observers. A CudaAttentionObserver (e.g. CudaSimilarityEstimator) may
// consume a block's probabilities on the device, in stream order (the
// estimator's decode path); blocks it declines are copied on a side stream
// into pinned host memory and handed over as AttentionWeights, one block
// behind the computation (double-buffered), so the GPU does not wait for
// the host. A plain AttentionObserver (SetAttentionObserver) gets every
// block that way. Blocks are observer_query_block queries of one layer,
// like the CPU engine's.
//
// Synchronization. ComputeLayer, Embed and ComputeLogits only enqueue work
// on stream() and return; errors of the enqueued work surface at the next
// synchronizing call (Forward, ForwardNext, Synchronize). Forward and
// ForwardNext synchronize before returning. After an INTERNAL error (e.g.
// an illegal address) the device context is unusable: destroy the engine.
//
// Tensor parallelism (options.tp, see cuda_tensor_parallel.h): rank r of W
// holds query heads [r H/W, (r+1) H/W), the matching KV heads and hidden
// units [r F/W, (r+1) F/W); wo and w2 are split by input columns and their
// partial outputs are summed with an NCCL all-reduce, so every rank ends
// each layer with the full residual stream. The classifier is replicated.
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

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/engine/cuda/cuda_memory.h"
#include "krul/base/dtype.h"
#include "krul/engine/engine_cpu.h"
#include "krul/model/model.h"

namespace krul {

class CudaTpComm;  // cuda_tensor_parallel.h

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

// Receives a CudaEngine's attention probabilities.
class CudaAttentionObserver {
 public:
  virtual ~CudaAttentionObserver() = default;
  // `weights.probs` is DEVICE memory, fp32 (n_heads, num_queries,
  // context_len) where n_heads is the engine's local_heads(); valid for work
  // enqueued on `stream` now, overwritten by later engine work. Return true
  // to consume the block (enqueue any device work on `stream`; never
  // synchronize), false to have it delivered by OnHostAttention instead.
  virtual bool OnDeviceAttention(const AttentionWeights& weights, cudaStream_t stream) = 0;
  // `weights.probs` is pinned HOST memory, valid during the call. Called on
  // the engine's calling thread.
  virtual void OnHostAttention(const AttentionWeights& weights) = 0;
};

class CudaEngine;

// The KV cache of one sequence on the device: per layer, K then V, each
// (capacity, kv_dim) rows of the engine's dtype, where kv_dim is the
// engine's local_kv_dim() (this rank's KV heads). Zeroed on creation.
// Move-only; not thread-safe.
class CudaKvCache {
 public:
  // INVALID_ARGUMENT when capacity is not in [1, seq_len]; allocation errors.
  static absl::StatusOr<CudaKvCache> Create(const CudaEngine& engine, int capacity_tokens);

  int n_layers() const { return n_layers_; }
  int kv_dim() const { return kv_dim_; }
  int capacity() const { return capacity_; }
  DType dtype() const { return dtype_; }
  int device() const { return device_; }
  // Bytes of one row (one token of K or of V of one layer).
  size_t row_bytes() const { return row_bytes_; }

  // Device pointers to the row of `pos` (0 <= pos <= capacity).
  void* key(int layer, int pos) const;
  void* value(int layer, int pos) const;

  // Copies rows [begin, begin + n) of `layer` between the device and host
  // buffers of n * row_bytes() each (K and V). The host copies are
  // synchronous; the async one enqueues on `stream` and needs pinned memory
  // to overlap. INVALID_ARGUMENT for a range outside the cache.
  absl::Status CopyLayerToHost(int layer, int begin, int n, void* keys, void* values) const;
  absl::Status CopyLayerFromHost(int layer, int begin, int n, const void* keys, const void* values);
  absl::Status CopyLayerFromHostAsync(int layer, int begin, int n, const void* keys,
                                      const void* values, cudaStream_t stream);

 private:
  CudaKvCache() = default;
  absl::Status CheckRange(int layer, int begin, int n) const;
  int n_layers_ = 0;
  int kv_dim_ = 0;
  int capacity_ = 0;
  DType dtype_ = DType::kF32;
  int device_ = 0;
  size_t row_bytes_ = 0;
  CudaDeviceBuffer storage_;
};

// How ForwardNext picks the token: temperature 0 = argmax (first index on
// ties); otherwise inverse-CDF sampling of softmax(logits / temperature)
// with the caller's uniform number in [0, 1) (nucleus filtering: copy the
// logits to the host and use krul::Sampler).
struct CudaSampling {
  float temperature = 0.0f;
  float uniform = 0.0f;
};

class CudaEngine {
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

  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  const ModelConfig& config() const;  // the whole model
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
  // The stream all work is enqueued on.
  cudaStream_t stream() const;

  // Host token ids -> host logits, same contract as Engine::Forward:
  // `logits` is empty, vocab_size floats (the last token's) or n *
  // vocab_size (every token's). INVALID_ARGUMENT for a bad token id, an
  // empty token list, positions beyond the cache or a logits span of another
  // size; device errors as CudaStatus. Synchronizes.
  absl::Status Forward(CudaKvCache& cache, std::span<const int> tokens, int start_pos,
                       std::span<float> logits);

  // Forward, then picks the next token on the device from the last token's
  // logits (only 4 bytes come back). Same errors; INVALID_ARGUMENT for a
  // negative temperature or a uniform outside [0, 1). Synchronizes.
  absl::StatusOr<int> ForwardNext(CudaKvCache& cache, std::span<const int> tokens, int start_pos,
                                  const CudaSampling& sampling = {});

  // hidden (n, dim) fp32, device = embeddings of `tokens`. INVALID_ARGUMENT
  // for an empty list or an id out of range. Enqueues only.
  absl::Status Embed(std::span<const int> tokens, float* hidden);

  // Transformer block `layer` for tokens [start_pos, start_pos + n): reads
  // their input rows from device `hidden` (n, dim) fp32, writes their K/V
  // into `cache` and replaces `hidden` with the block's output; attention
  // sees cache positions [0, start_pos + n). INVALID_ARGUMENT for a bad
  // layer or range. Enqueues only (unless a host observer is set: delivering
  // its blocks waits for their copies).
  absl::Status ComputeLayer(int layer, CudaKvCache& cache, int start_pos, int num_tokens,
                            float* hidden);

  // logits (num_rows, vocab) fp32, device = classifier(rmsnorm_final(rows
  // of device `hidden` (num_rows, dim))). Enqueues only.
  absl::Status ComputeLogits(const float* hidden, int num_rows, float* logits);

  // Sets (nullptr clears) the observer; not owned. Delivers every pending
  // block to the previous observer first. A plain AttentionObserver gets
  // every block in host memory.
  absl::Status SetObserver(CudaAttentionObserver* observer);
  absl::Status SetAttentionObserver(AttentionObserver* observer);
  bool has_observer() const;

  // Waits for all enqueued work, delivers pending observer blocks, and
  // returns the first error of the enqueued work.
  absl::Status Synchronize();

 private:
  class Impl;
  explicit CudaEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace krul

#endif  // KRUL_ENGINE_CUDA_ENGINE_CUDA_H_
