#include "krul/engine/cuda/cuda_memory.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "krul/engine/cuda/cuda_util.h"

namespace krul {

absl::Status CudaStatus(cudaError_t error, std::string_view what) {
  if (error == cudaSuccess) return absl::OkStatus();
  const std::string message = absl::StrCat(std::string(what), ": ", cudaGetErrorName(error), " (",
                                           cudaGetErrorString(error), ")");
  switch (error) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(message);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInitializationError:
    case cudaErrorDevicesUnavailable:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
      return absl::FailedPreconditionError(message);
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::StatusOr<int> CudaDeviceCount() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky: clear it for later calls
    return absl::FailedPreconditionError(absl::StrCat(
        "no usable CUDA device: ", cudaGetErrorName(error), " (", cudaGetErrorString(error), ")"));
  }
  if (count == 0) return absl::FailedPreconditionError("no CUDA device found");
  return count;
}

namespace cuda_internal {

absl::Status CublasStatus(cublasStatus_t status, std::string_view what) {
  const std::string message = absl::StrCat(std::string(what), ": ", cublasGetStatusName(status),
                                           " (", cublasGetStatusString(status), ")");
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return absl::OkStatus();
    case CUBLAS_STATUS_ALLOC_FAILED:
      return absl::ResourceExhaustedError(message);
    case CUBLAS_STATUS_INVALID_VALUE:
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

cudaDataType_t CudaDataType(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF32:
      break;
  }
  return CUDA_R_32F;
}

}  // namespace cuda_internal

// ---- CudaBuffer -----------------------------------------------------------------

namespace {

cudaError_t AllocateMemory(DeviceMemory, void** p, size_t bytes) { return cudaMalloc(p, bytes); }
cudaError_t AllocateMemory(PinnedMemory, void** p, size_t bytes) {
  return cudaHostAlloc(p, bytes, cudaHostAllocPortable);
}
void FreeMemory(DeviceMemory, void* p) { (void)cudaFree(p); }
void FreeMemory(PinnedMemory, void* p) { (void)cudaFreeHost(p); }
const char* AllocatorName(DeviceMemory) { return "cudaMalloc"; }
const char* AllocatorName(PinnedMemory) { return "cudaHostAlloc"; }

}  // namespace

template <typename Memory>
absl::StatusOr<CudaBuffer<Memory>> CudaBuffer<Memory>::Allocate(size_t bytes) {
  CudaBuffer buffer;
  if (bytes == 0) return buffer;
  void* p = nullptr;
  const cudaError_t error = AllocateMemory(Memory{}, &p, bytes);
  if (error != cudaSuccess) {
    (void)cudaGetLastError();  // an allocation failure is not sticky
    return CudaStatus(error, absl::StrCat(AllocatorName(Memory{}), "(", bytes, " bytes)"));
  }
  buffer.data_ = p;
  buffer.bytes_ = bytes;
  return buffer;
}

template <typename Memory>
CudaBuffer<Memory>::~CudaBuffer() {
  if (data_ != nullptr) FreeMemory(Memory{}, data_);
}

template <typename Memory>
CudaBuffer<Memory>::CudaBuffer(CudaBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

template <typename Memory>
CudaBuffer<Memory>& CudaBuffer<Memory>::operator=(CudaBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) FreeMemory(Memory{}, data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

template class CudaBuffer<DeviceMemory>;
template class CudaBuffer<PinnedMemory>;

}  // namespace krul
