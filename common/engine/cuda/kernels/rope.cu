// RoPE on the fused q|k|v projection output, scattering q into its buffer
// and k, v into the KV cache rows. Adjacent-pair rotation, as the CPU engine
// (cpu_ops.h ApplyRope) and llama2.c do.
#include "device_util.cuh"

namespace krul::cuda_kernels {
namespace {

constexpr int kThreads = 128;

// One block per token; each thread handles element pairs (2i, 2i+1).
template <typename T>
__global__ void RopeScatterKernel(const T* qkv, int qkv_ld, int n_heads, int n_kv_heads,
                                  int head_size, int rotary_dim, const float* cos, const float* sin,
                                  T* q_out, T* k_out, T* v_out) {
  const int t = blockIdx.x;
  const int q_dim = n_heads * head_size, kv_dim = n_kv_heads * head_size;
  const int half = rotary_dim / 2;
  const T* row = qkv + static_cast<size_t>(t) * qkv_ld;
  const float* cos_row = cos + static_cast<size_t>(t) * half;
  const float* sin_row = sin + static_cast<size_t>(t) * half;
  const int pairs = (q_dim + 2 * kv_dim) / 2;
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int e = 2 * p;
    const float v0 = ToFloat(row[e]), v1 = ToFloat(row[e + 1]);
    T* dst;
    int i;  // index inside the head
    bool rotate;
    if (e < q_dim) {
      dst = q_out + static_cast<size_t>(t) * q_dim + e;
      i = e % head_size;
      rotate = i < rotary_dim;
    } else if (e < q_dim + kv_dim) {
      dst = k_out + static_cast<size_t>(t) * kv_dim + (e - q_dim);
      i = (e - q_dim) % head_size;
      rotate = i < rotary_dim;
    } else {
      dst = v_out + static_cast<size_t>(t) * kv_dim + (e - q_dim - kv_dim);
      i = 0;
      rotate = false;
    }
    if (rotate) {
      const float c = cos_row[i / 2], s = sin_row[i / 2];
      // Explicit roundings (no fused multiply-add), like the CPU engine.
      dst[0] = FromFloat<T>(__fsub_rn(__fmul_rn(v0, c), __fmul_rn(v1, s)));
      dst[1] = FromFloat<T>(__fadd_rn(__fmul_rn(v0, s), __fmul_rn(v1, c)));
    } else {
      dst[0] = FromFloat<T>(v0);
      dst[1] = FromFloat<T>(v1);
    }
  }
}

}  // namespace

cudaError_t RopeScatter(DType dtype, const void* qkv, int qkv_ld, int n, int n_heads,
                        int n_kv_heads, int head_size, int rotary_dim, const float* cos,
                        const float* sin, void* q_out, void* k_out, void* v_out,
                        cudaStream_t stream) {
  if (n <= 0 || head_size <= 0 || head_size % 2 != 0 || rotary_dim % 2 != 0 ||
      rotary_dim > head_size || qkv_ld < (n_heads + 2 * n_kv_heads) * head_size) {
    return cudaErrorInvalidValue;
  }
  return DispatchDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    RopeScatterKernel<T><<<n, kThreads, 0, stream>>>(
        static_cast<const T*>(qkv), qkv_ld, n_heads, n_kv_heads, head_size, rotary_dim, cos, sin,
        static_cast<T*>(q_out), static_cast<T*>(k_out), static_cast<T*>(v_out));
    return cudaGetLastError();
  });
}

}  // namespace krul::cuda_kernels
