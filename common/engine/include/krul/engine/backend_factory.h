// Picks and builds a ComputeBackend (backend.h) for a model: the CPU engine
// or, in builds with CUDA (KRUL_CUDA_ENABLED) and a usable GPU, the CUDA
// engine. The target krul_backend_factory links the CUDA engine only in
// CUDA builds, so code above it (the worker, benchmarks) never names CUDA.
//
// Thread-safe (no state).
#ifndef KRUL_ENGINE_BACKEND_FACTORY_H_
#define KRUL_ENGINE_BACKEND_FACTORY_H_

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "krul/base/dtype.h"
#include "krul/engine/backend.h"
#include "krul/engine/engine_cpu.h"
#include "krul/model/model.h"

namespace krul {

enum class Device {
  kAuto,  // CUDA when the build has it and a device is usable; else the CPU
  kCpu,
  kCuda,
};

// "auto", "cpu" or "cuda".
std::string_view DeviceName(Device device);
// The inverse of DeviceName. INVALID_ARGUMENT "unknown device '<name>';
// expected auto, cpu or cuda" otherwise.
absl::StatusOr<Device> ParseDevice(std::string_view name);

// Whether this build includes the CUDA backend.
bool BuildHasCuda();

// The device `requested` runs on here: kCpu stays kCpu; kAuto becomes kCuda
// when BuildHasCuda() and a CUDA device is usable, else kCpu; kCuda stays
// kCuda. FAILED_PRECONDITION for kCuda when the build has no CUDA backend or
// no CUDA device is usable (the message says which, and that "cpu" or
// "auto" works instead).
absl::StatusOr<Device> ResolveDevice(Device requested);

struct BackendOptions {
  Device device = Device::kAuto;
  // The CPU engine's options (threads, pool, observer block).
  EngineOptions cpu;
  // The CUDA engine's device index and storage type of weights and KV.
  int cuda_device = 0;
  DType cuda_dtype = DType::kBF16;
};

// A backend for `model` on ResolveDevice(options.device). The CPU backend
// borrows `model` (it must outlive the backend); the CUDA backend copies the
// weights to the device. Errors of ResolveDevice, Engine::Create and
// CudaEngine::Create.
absl::StatusOr<std::unique_ptr<ComputeBackend>> CreateBackend(const Model& model,
                                                              const BackendOptions& options = {});

}  // namespace krul

#endif  // KRUL_ENGINE_BACKEND_FACTORY_H_
