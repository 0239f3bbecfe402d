// The load side of the cost model's probe on a CUDA device (see
// krul/restore/cuda/load_probe_cuda.h).
#include "krul/restore/cuda/load_probe_cuda.h"

#include <cstring>

#include "krul/base/status_macros.h"
#include "krul/engine/cuda/cuda_util.h"

namespace krul {

absl::StatusOr<LoadCoefficients> ProbeCudaLoad(const CudaEngine& engine, size_t bytes_per_token,
                                               const LoadProbeOptions& options) {
  if (bytes_per_token == 0) return absl::InvalidArgumentError("bytes_per_token must be > 0");
  if (options.large_tokens < 1 || options.small_tokens < 1) {
    return absl::InvalidArgumentError("LoadProbeOptions out of range");
  }
  KRUL_CUDA_RETURN_IF_ERROR(cudaSetDevice(engine.device()));
  const size_t bytes = bytes_per_token * static_cast<size_t>(options.large_tokens);
  auto host = CudaPinnedBuffer::Allocate(bytes);
  if (!host.ok()) return host.status();
  auto device = CudaDeviceBuffer::Allocate(bytes);
  if (!device.ok()) return device.status();
  // Copy times do not depend on the values; any non-zero pattern does.
  std::memset(host->data(), 0x5a, bytes);
  cudaStream_t stream = nullptr;
  KRUL_CUDA_RETURN_IF_ERROR(cudaStreamCreate(&stream));
  auto fetch = [&](int tokens) -> absl::StatusOr<size_t> {
    const size_t total = bytes_per_token * static_cast<size_t>(tokens);
    const size_t half = total / 2;
    KRUL_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(device->data(), host->data(), half, cudaMemcpyHostToDevice, stream));
    KRUL_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(device->as<uint8_t>() + half,
                                              host->as<uint8_t>() + half, total - half,
                                              cudaMemcpyHostToDevice, stream));
    KRUL_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return total;
  };
  // A warm-up fetch first: the first copy pays for mapping the buffers.
  const absl::Status warm = fetch(options.large_tokens).status();
  absl::StatusOr<LoadCoefficients> result =
      warm.ok() ? ProbeLoad(fetch, options) : absl::StatusOr<LoadCoefficients>(warm);
  (void)cudaStreamDestroy(stream);
  return result;
}

}  // namespace krul
