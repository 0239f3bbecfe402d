// Tensor parallelism across the GPUs of one worker process, over NCCL.
//
// A CudaTpGroup holds one NCCL communicator per GPU (ncclCommInitAll); rank
// r's CudaEngine gets comm(r) in CudaEngineOptions::tp and holds its shard
// of the weights (see engine_cuda.h). Each layer ends with two all-reduces
// of the (tokens, dim) fp32 residual stream, so every rank has to run the
// same calls at the same time: CudaTpEngine drives the ranks with one host
// thread each.
//
// NCCL is loaded at run time with dlopen ("libnccl.so.2", or the path in
// $KRUL_NCCL_LIBRARY), only when world size > 1: a one-GPU worker needs no
// NCCL library at all, and builds need no NCCL headers.
//
// World size 1 is the normal case here (one GPU): no communicator, no
// all-reduce, identical to a plain CudaEngine.
#ifndef KRUL_ENGINE_CUDA_TENSOR_PARALLEL_H_
#define KRUL_ENGINE_CUDA_TENSOR_PARALLEL_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/engine/cuda/engine_cuda.h"
#include "krul/model/model.h"

namespace krul {

// One rank's communicator. Owned by its CudaTpGroup. Thread-compatible: one
// thread per rank.
class CudaTpComm {
 public:
  virtual ~CudaTpComm() = default;
  virtual int rank() const = 0;
  virtual int world() const = 0;
  // In-place sum of `count` floats over all ranks, enqueued on `stream`.
  // INTERNAL with NCCL's message on failure.
  virtual absl::Status AllReduceSum(float* data, size_t count, cudaStream_t stream) = 0;
};

class CudaTpGroup {
 public:
  // Communicators for `devices` (rank r on devices[r]). INVALID_ARGUMENT for
  // an empty list or a repeated device; UNAVAILABLE when world > 1 and NCCL
  // cannot be loaded; INTERNAL for NCCL errors.
  static absl::StatusOr<std::unique_ptr<CudaTpGroup>> Create(std::span<const int> devices);
  ~CudaTpGroup();

  int world() const { return static_cast<int>(devices_.size()); }
  int device(int rank) const { return devices_[rank]; }
  // nullptr for world size 1 (engines then run without a communicator).
  CudaTpComm* comm(int rank) const;

 private:
  CudaTpGroup() = default;
  std::vector<int> devices_;
  std::vector<std::unique_ptr<CudaTpComm>> comms_;
};

// One model split over the GPUs of a CudaTpGroup. Not thread-safe.
class CudaTpEngine {
 public:
  // Engines for every rank from `model` (or synthetic weights): `base` gives
  // the options but device and tp, which come from `devices`. Errors as
  // CudaTpGroup::Create and CudaEngine::Create.
  static absl::StatusOr<std::unique_ptr<CudaTpEngine>> Create(const Model& model,
                                                              std::span<const int> devices,
                                                              const CudaEngineOptions& base = {});
  static absl::StatusOr<std::unique_ptr<CudaTpEngine>> CreateSynthetic(
      const ModelConfig& config, uint64_t seed, std::span<const int> devices,
      const CudaEngineOptions& base = {});
  ~CudaTpEngine();

  int world() const { return static_cast<int>(engines_.size()); }
  CudaEngine& rank_engine(int rank) { return *engines_[rank]; }

  // One cache per rank (each holds its rank's KV heads).
  absl::StatusOr<std::vector<CudaKvCache>> CreateCaches(int capacity_tokens);

  // CudaEngine::Forward on every rank at once; `logits` receives rank 0's
  // (all ranks compute the same). INVALID_ARGUMENT when caches.size() !=
  // world(); otherwise the first rank's error.
  absl::Status Forward(std::span<CudaKvCache> caches, std::span<const int> tokens, int start_pos,
                       std::span<float> logits);

  // Runs fn(rank) for every rank, rank 0 on the calling thread and the others
  // on threads of their own, and returns the first non-OK status in rank
  // order. fn must make the same collective calls on every rank.
  absl::Status RunOnRanks(const std::function<absl::Status(int rank)>& fn);

 private:
  CudaTpEngine() = default;
  std::unique_ptr<CudaTpGroup> group_;
  std::vector<std::unique_ptr<CudaEngine>> engines_;
};

}  // namespace krul

#endif  // KRUL_ENGINE_CUDA_TENSOR_PARALLEL_H_
