// Helpers for the CUDA backend's tests: skipping without a GPU, device
// buffers from host vectors, error norms, and CPU reference models whose
// weights carry the GPU engine's rounding.
#ifndef KRUL_TESTS_TEST_SUPPORT_CUDA_TEST_UTIL_H_
#define KRUL_TESTS_TEST_SUPPORT_CUDA_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "gtest/gtest.h"
#include "krul/base/dtype.h"
#include "krul/engine/cuda/cuda_memory.h"
#include "krul/model/model.h"

// Skips the test, with the reason, when no CUDA device is usable (no driver,
// no GPU): CPU-only machines build and run these tests as skips.
#define KRUL_REQUIRE_CUDA_DEVICE()                                                    \
  do {                                                                                \
    auto krul_device_count_ = ::krul::CudaDeviceCount();                              \
    if (!krul_device_count_.ok()) {                                                   \
      GTEST_SKIP() << "no usable CUDA GPU (" << krul_device_count_.status().message() \
                   << "); CUDA tests run on a GPU machine (scripts/gpu-check.sh)";    \
    }                                                                                 \
  } while (0)

namespace krul::testing {

// ||a - b|| / ||b|| (L2), over min(a.size(), b.size()) elements; the sizes
// are expected to match.
double RelativeError(std::span<const float> a, std::span<const float> b);

// Largest |a_i - b_i|.
double MaxAbsDiff(std::span<const float> a, std::span<const float> b);

// A device copy of `values` (fails the test on error).
CudaDeviceBuffer ToDevice(std::span<const float> values);
CudaDeviceBuffer ToDeviceBytes(const void* data, size_t bytes);
CudaDeviceBuffer DeviceZeros(size_t bytes);
std::vector<float> ToHost(const CudaDeviceBuffer& buffer, size_t count);
// `count` elements of `dtype` from the device, as fp32.
std::vector<float> ToHostAs(DType dtype, const void* device, size_t count);

// Seeded uniform values in [lo, hi).
std::vector<float> RandomVector(size_t n, float lo, float hi, uint64_t seed);

// A copy of `model` whose matrices and embeddings are rounded to `dtype`
// (norm weights stay fp32, as in the CUDA engine): the CPU reference for a
// CUDA engine of that dtype.
std::unique_ptr<Model> RoundedModel(const Model& model, DType dtype);

// A small synthetic config: GQA, several layers, fast on the CPU.
ModelConfig SmallConfig(int seq_len = 128);

// Seeded token ids in [3, vocab).
std::vector<int> RandomTokens(int n, int vocab, uint64_t seed);

}  // namespace krul::testing

#endif  // KRUL_TESTS_TEST_SUPPORT_CUDA_TEST_UTIL_H_
