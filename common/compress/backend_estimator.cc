#include "krul/compress/backend_estimator.h"

#include <utility>

#include "krul/base/status_macros.h"

#if KRUL_CUDA_ENABLED
#include "krul/compress/cuda/estimator_cuda.h"
#include "krul/engine/cuda/engine_cuda.h"
#endif

namespace krul {
namespace {

class CpuBackendEstimator final : public BackendEstimator {
 public:
  explicit CpuBackendEstimator(std::unique_ptr<SimilarityEstimator> estimator)
      : estimator_(std::move(estimator)) {}
  AttentionObserver* observer() override { return estimator_.get(); }
  absl::StatusOr<SimilarityEstimate> Finish() override { return estimator_->Finish(); }

 private:
  std::unique_ptr<SimilarityEstimator> estimator_;
};

#if KRUL_CUDA_ENABLED
class CudaBackendEstimator final : public BackendEstimator {
 public:
  explicit CudaBackendEstimator(std::unique_ptr<CudaSimilarityEstimator> estimator)
      : estimator_(std::move(estimator)) {}
  AttentionObserver* observer() override { return estimator_.get(); }
  absl::StatusOr<SimilarityEstimate> Finish() override { return estimator_->Finish(); }

 private:
  std::unique_ptr<CudaSimilarityEstimator> estimator_;
};
#endif

}  // namespace

absl::StatusOr<std::unique_ptr<BackendEstimator>> CreateBackendEstimator(
    ComputeBackend& backend, int max_context, const SimilarityEstimatorOptions& options) {
  if (max_context < 1) return absl::InvalidArgumentError("max_context must be >= 1");
#if KRUL_CUDA_ENABLED
  if (auto* cuda = dynamic_cast<CudaEngine*>(&backend); cuda != nullptr) {
    KRUL_ASSIGN_OR_RETURN(auto estimator,
                          CudaSimilarityEstimator::Create(*cuda, max_context, options));
    return std::unique_ptr<BackendEstimator>(new CudaBackendEstimator(std::move(estimator)));
  }
#endif
  KRUL_ASSIGN_OR_RETURN(auto estimator, SimilarityEstimator::Create(backend.config(), options));
  return std::unique_ptr<BackendEstimator>(new CpuBackendEstimator(std::move(estimator)));
}

}  // namespace krul
