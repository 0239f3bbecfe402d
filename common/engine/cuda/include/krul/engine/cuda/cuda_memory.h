// Owned device memory and pinned (page-locked) host memory for the CUDA
// backend, and the mapping of CUDA runtime errors to absl::Status.
//
// Both buffers are move-only owners that free their memory in the destructor
// (the device buffer with cudaFree, which waits for the device to be idle:
// free buffers only between operations). A buffer of zero bytes holds
// nullptr. Not thread-safe; distinct buffers may be used from distinct
// threads.
//
// The engine's CUDA headers live in common/engine/cuda/include/krul/engine/cuda/
// and are visible only to targets that link krul_engine_cuda, which exists
// when CMake found a CUDA compiler (KRUL_CUDA_ENABLED). See docs/cuda.md.
#ifndef KRUL_ENGINE_CUDA_CUDA_MEMORY_H_
#define KRUL_ENGINE_CUDA_CUDA_MEMORY_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace krul {

// OK for cudaSuccess; otherwise RESOURCE_EXHAUSTED for an allocation
// failure, FAILED_PRECONDITION when there is no usable device or driver,
// INVALID_ARGUMENT for an invalid value/device, INTERNAL for anything else
// (including launch failures and illegal addresses, after which the device
// context is unusable). The message names `what` and the CUDA error.
absl::Status CudaStatus(cudaError_t error, std::string_view what);

// Number of CUDA devices, or the reason there are none usable
// (FAILED_PRECONDITION: no driver, no device).
absl::StatusOr<int> CudaDeviceCount();

// Which memory a CudaBuffer owns.
struct DeviceMemory {};  // cudaMalloc / cudaFree, on the current device
struct PinnedMemory {};  // cudaHostAlloc (portable across devices) / cudaFreeHost

template <typename Memory>
class CudaBuffer {
 public:
  CudaBuffer() = default;
  // `bytes` of uninitialized memory (device memory on the current device,
  // cudaSetDevice; or page-locked host memory). Errors as CudaStatus.
  static absl::StatusOr<CudaBuffer> Allocate(size_t bytes);
  ~CudaBuffer();
  CudaBuffer(CudaBuffer&& other) noexcept;
  CudaBuffer& operator=(CudaBuffer&& other) noexcept;
  CudaBuffer(const CudaBuffer&) = delete;
  CudaBuffer& operator=(const CudaBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

using CudaDeviceBuffer = CudaBuffer<DeviceMemory>;
using CudaPinnedBuffer = CudaBuffer<PinnedMemory>;

}  // namespace krul

#endif  // KRUL_ENGINE_CUDA_CUDA_MEMORY_H_
