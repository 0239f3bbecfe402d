// The similarity estimator on a CUDA engine: token-wise heterogeneous, as
// the design asks (quantities as in similarity_estimator.h):
//
//  - Decode tokens (blocks of one query): every layer's attention rows stay
//    on the device. The estimator copies each layer's rows (n_heads x
//    context) into an (L, heads, context) device buffer, in stream order;
//    once the token's last layer has reported, two kernels add the token's
//    contribution to the L x L distance matrix D (fp64, on the device) and
//    the edge masses. Nothing comes back to the host until Finish().
//  - Prefill blocks (more than one query): the engine copies them into
//    pinned host memory on a side stream (OnAttention), and this estimator
//    hands them to a krul::SimilarityEstimator (the CPU one), whose
//    background thread updates the prefill part of D off the critical path.
// Finish() sums the two parts into one SimilarityEstimate.
//
// Options are SimilarityEstimatorOptions: decode_head_stride samples the
// decode rows on the device; the prefill options go to the CPU estimator.
// With tensor parallelism, attach one estimator per rank (each sees its
// rank's heads) and Merge() their estimates (then prefill_tokens and
// decode_tokens count every token once per rank).
//
// Thread safety: used by one engine, on the engine's thread. Device errors
// inside the observer callbacks (which cannot return one) are kept and
// returned by Finish().
#ifndef KRUL_COMPRESS_CUDA_ESTIMATOR_CUDA_H_
#define KRUL_COMPRESS_CUDA_ESTIMATOR_CUDA_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/cuda/engine_cuda.h"

namespace krul {

class CudaSimilarityEstimator final : public CudaAttentionObserver {
 public:
  // For `engine` (its device, layers and local heads) and contexts up to
  // `max_context` tokens (the cache capacity). INVALID_ARGUMENT for bad
  // options, max_context < 1, or more layers than the device kernel
  // supports (about 140); allocation errors as CudaStatus.
  static absl::StatusOr<std::unique_ptr<CudaSimilarityEstimator>> Create(
      const CudaEngine& engine, int max_context, const SimilarityEstimatorOptions& options = {});
  ~CudaSimilarityEstimator() override;
  CudaSimilarityEstimator(const CudaSimilarityEstimator&) = delete;
  CudaSimilarityEstimator& operator=(const CudaSimilarityEstimator&) = delete;

  // CudaAttentionObserver: decode blocks on the device, prefill blocks
  // (in pinned host memory) to the CPU estimator.
  bool OnDeviceAttention(const AttentionWeights& weights, cudaStream_t stream) override;
  void OnAttention(const AttentionWeights& weights) override;

  // Waits for the device and the CPU estimator's background work, returns
  // everything observed since creation or the last Finish/Reset, and starts
  // afresh. The first device error met while observing, if any, instead
  // (the accumulation is reset either way).
  absl::StatusOr<SimilarityEstimate> Finish();
  absl::Status Reset();

  // Decode tokens accumulated on the device since the last Finish/Reset.
  int64_t decode_tokens() const;

 private:
  class Impl;
  explicit CudaSimilarityEstimator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace krul

#endif  // KRUL_COMPRESS_CUDA_ESTIMATOR_CUDA_H_
