// The similarity estimator that fits a compute backend (backend.h): the CPU
// SimilarityEstimator on the "cpu" backend; on "cuda", the
// CudaSimilarityEstimator (decode rows reduced on the device, prefill on
// the host). What the worker holds during a turn, without naming CUDA: the
// target krul_backend_estimator links the CUDA estimator only in CUDA
// builds.
//
//   auto estimator = CreateBackendEstimator(backend, capacity);
//   backend.SetAttentionObserver((*estimator)->observer());
//   ... prefill, decode ...
//   backend.SetAttentionObserver(nullptr);
//   auto estimate = (*estimator)->Finish();
//
// Thread safety: an estimator observes one backend, on its thread; Finish
// may be called on another thread once the backend no longer reports to it.
#ifndef KRUL_COMPRESS_BACKEND_ESTIMATOR_H_
#define KRUL_COMPRESS_BACKEND_ESTIMATOR_H_

#include <memory>

#include "absl/status/statusor.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/backend.h"

namespace krul {

class BackendEstimator {
 public:
  virtual ~BackendEstimator() = default;
  // The observer to set on the backend it was made for; owned by this.
  virtual AttentionObserver* observer() = 0;
  // Waits for background and device work, returns everything observed
  // since creation or the last Finish, and starts afresh. Device errors met
  // while observing (CUDA) instead; the CPU estimator never fails.
  virtual absl::StatusOr<SimilarityEstimate> Finish() = 0;
};

// An estimator for `backend` (its model; on CUDA also its device and local
// heads) over contexts up to `max_context` tokens (the cache capacity).
// INVALID_ARGUMENT for bad options or max_context < 1; errors of the
// estimator's Create.
absl::StatusOr<std::unique_ptr<BackendEstimator>> CreateBackendEstimator(
    ComputeBackend& backend, int max_context, const SimilarityEstimatorOptions& options = {});

}  // namespace krul

#endif  // KRUL_COMPRESS_BACKEND_ESTIMATOR_H_
