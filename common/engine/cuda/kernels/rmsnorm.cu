// RMSNorm: one block per row, the sum of squares reduced in fp32.
#include "device_util.cuh"

namespace krul::cuda_kernels {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void RmsNormKernel(const float* x, const float* weight, int dim, float eps, T* out) {
  const float* row = x + static_cast<size_t>(blockIdx.x) * dim;
  T* dst = out + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += row[i] * row[i];
  ss = BlockSum(ss);
  // The CPU engine's order of operations (cpu_ops.h RmsNorm): mean, + eps,
  // 1 / sqrt, then weight * (inv * x).
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    dst[i] = FromFloat<T>(weight[i] * (inv * row[i]));
  }
}

}  // namespace

cudaError_t RmsNorm(DType dtype, const float* x, const float* weight, int rows, int dim, float eps,
                    void* out, cudaStream_t stream) {
  if (rows <= 0 || dim <= 0) return cudaErrorInvalidValue;
  return DispatchDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    RmsNormKernel<T><<<rows, kThreads, 0, stream>>>(x, weight, dim, eps, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

}  // namespace krul::cuda_kernels
