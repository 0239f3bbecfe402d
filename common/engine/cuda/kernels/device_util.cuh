// Device helpers shared by the kernel files: element conversions, warp and
// block reductions, and the dtype dispatch of the launchers.
#ifndef KRUL_COMMON_ENGINE_CUDA_KERNELS_DEVICE_UTIL_CUH_
#define KRUL_COMMON_ENGINE_CUDA_KERNELS_DEVICE_UTIL_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels.h"

namespace krul::cuda_kernels {

template <typename T>
__device__ __forceinline__ float ToFloat(T x);
template <>
__device__ __forceinline__ float ToFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ float ToFloat<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Sum / maximum of `v` over the block, returned to every thread. blockDim.x
// must be a multiple of 32 (every launcher uses 128 or 256 threads). Ends
// with a barrier, so consecutive calls may reuse the shared scratch.
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpSum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = blockDim.x >> 5;
    float w = lane < n_warps ? partial[lane] : 0.0f;
    w = WarpSum(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  const float result = total;
  __syncthreads();
  return result;
}

__device__ __forceinline__ float BlockMax(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = WarpMax(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = blockDim.x >> 5;
    float w = lane < n_warps ? partial[lane] : -FLT_MAX;
    w = WarpMax(w);
    if (lane == 0) total = w;
  }
  __syncthreads();
  const float result = total;
  __syncthreads();
  return result;
}

// Calls f(T{}) with T the element type of `dtype`; cudaErrorInvalidValue for
// an unknown dtype.
template <typename F>
cudaError_t DispatchDType(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32:
      return f(float{});
    case DType::kF16:
      return f(__half{});
    case DType::kBF16:
      return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Blocks for a grid-stride loop over `count` elements.
inline int GridFor(size_t count, int threads, int max_blocks = 65535) {
  const size_t blocks = (count + threads - 1) / threads;
  return static_cast<int>(blocks < static_cast<size_t>(max_blocks) ? (blocks > 0 ? blocks : 1)
                                                                   : max_blocks);
}

}  // namespace krul::cuda_kernels

#endif  // KRUL_COMMON_ENGINE_CUDA_KERNELS_DEVICE_UTIL_CUH_
