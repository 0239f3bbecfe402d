#include "krul/engine/backend_factory.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "krul/base/status_macros.h"

#if KRUL_CUDA_ENABLED
#include "krul/engine/cuda/cuda_memory.h"
#include "krul/engine/cuda/engine_cuda.h"
#endif

namespace krul {

std::string_view DeviceName(Device device) {
  switch (device) {
    case Device::kAuto:
      return "auto";
    case Device::kCpu:
      return "cpu";
    case Device::kCuda:
      return "cuda";
  }
  return "unknown";
}

absl::StatusOr<Device> ParseDevice(std::string_view name) {
  for (Device d : {Device::kAuto, Device::kCpu, Device::kCuda}) {
    if (name == DeviceName(d)) return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device '", std::string(name), "'; expected auto, cpu or cuda"));
}

bool BuildHasCuda() { return KRUL_CUDA_ENABLED != 0; }

absl::StatusOr<Device> ResolveDevice(Device requested) {
  if (requested == Device::kCpu) return Device::kCpu;
#if KRUL_CUDA_ENABLED
  absl::StatusOr<int> devices = CudaDeviceCount();
  if (devices.ok()) return Device::kCuda;
  if (requested == Device::kAuto) return Device::kCpu;
  return absl::FailedPreconditionError(
      absl::StrCat("CUDA was requested, but no CUDA device is usable (", devices.status().message(),
                   "); use device cpu or auto"));
#else
  if (requested == Device::kAuto) return Device::kCpu;
  return absl::FailedPreconditionError(
      "CUDA was requested, but this build has no CUDA backend (configure with "
      "-DKRUL_WITH_CUDA=ON on a machine with the CUDA toolkit); use device cpu or auto");
#endif
}

absl::StatusOr<std::unique_ptr<ComputeBackend>> CreateBackend(const Model& model,
                                                              const BackendOptions& options) {
  KRUL_ASSIGN_OR_RETURN(const Device device, ResolveDevice(options.device));
#if KRUL_CUDA_ENABLED
  if (device == Device::kCuda) {
    CudaEngineOptions cuda;
    cuda.device = options.cuda_device;
    cuda.dtype = options.cuda_dtype;
    cuda.observer_query_block = options.cpu.observer_query_block;
    KRUL_ASSIGN_OR_RETURN(std::unique_ptr<CudaEngine> engine, CudaEngine::Create(model, cuda));
    return std::unique_ptr<ComputeBackend>(std::move(engine));
  }
#endif
  (void)device;  // kCpu: the only device left (kCuda resolved only in CUDA builds)
  KRUL_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(model, options.cpu));
  return std::unique_ptr<ComputeBackend>(std::move(engine));
}

}  // namespace krul
