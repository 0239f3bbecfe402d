// Error plumbing shared by the CUDA backend's .cc files. Internal.
#ifndef KRUL_ENGINE_CUDA_CUDA_UTIL_H_
#define KRUL_ENGINE_CUDA_CUDA_UTIL_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <string_view>

#include "absl/status/status.h"
#include "krul/base/dtype.h"
#include "krul/base/status_macros.h"  // KRUL_RETURN_IF_ERROR, KRUL_ASSIGN_OR_RETURN
#include "krul/engine/cuda/cuda_memory.h"

namespace krul::cuda_internal {

// INTERNAL naming `what` and the cuBLAS status (RESOURCE_EXHAUSTED for
// CUBLAS_STATUS_ALLOC_FAILED, INVALID_ARGUMENT for CUBLAS_STATUS_INVALID_VALUE
// and CUBLAS_STATUS_NOT_SUPPORTED).
absl::Status CublasStatus(cublasStatus_t status, std::string_view what);

// cuBLAS element type of `dtype`.
cudaDataType_t CudaDataType(DType dtype);

}  // namespace krul::cuda_internal

// Evaluates a cudaError_t expression; returns its Status from the enclosing
// function when it is not cudaSuccess.
#define KRUL_CUDA_RETURN_IF_ERROR(expr)                                                      \
  do {                                                                                       \
    const cudaError_t krul_cuda_error_ = (expr);                                             \
    if (krul_cuda_error_ != cudaSuccess) return ::krul::CudaStatus(krul_cuda_error_, #expr); \
  } while (0)

#define KRUL_CUBLAS_RETURN_IF_ERROR(expr)                                     \
  do {                                                                        \
    const cublasStatus_t krul_cublas_status_ = (expr);                        \
    if (krul_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                       \
      return ::krul::cuda_internal::CublasStatus(krul_cublas_status_, #expr); \
    }                                                                         \
  } while (0)

#endif  // KRUL_ENGINE_CUDA_CUDA_UTIL_H_
