// A CUDA helper for the cost model (cost_model.h): the load side of the
// start-up probe when the KV waits in pinned host memory (CudaHostKvStore).
// The compute side needs no CUDA helper: ProbeCompute times any backend
// between its marks (device events on CUDA).
#ifndef KRUL_RESTORE_CUDA_LOAD_PROBE_CUDA_H_
#define KRUL_RESTORE_CUDA_LOAD_PROBE_CUDA_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "krul/engine/cuda/engine_cuda.h"
#include "krul/restore/cost_model.h"

namespace krul {

// Times host pinned -> device copies of `bytes_per_token` x tokens on
// `engine`'s device, split in two copies (K and V) as a plain load step
// does, and fits LoadCoefficients (ProbeLoad). INVALID_ARGUMENT for
// bytes_per_token == 0 or options out of range; errors as ProbeLoad plus
// device errors.
absl::StatusOr<LoadCoefficients> ProbeCudaLoad(const CudaEngine& engine, size_t bytes_per_token,
                                               const LoadProbeOptions& options = {});

}  // namespace krul

#endif  // KRUL_RESTORE_CUDA_LOAD_PROBE_CUDA_H_
