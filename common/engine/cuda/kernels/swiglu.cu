// Element-wise kernels: SwiGLU, the embedding gather, seeded fills (the
// on-device synthetic weights) and the expansion of a merged layer pair
// during restore. Each is memory-bound and written as a grid-stride loop.
#include "device_util.cuh"

namespace krul::cuda_kernels {
namespace {

constexpr int kThreads = 256;

// splitmix64's finalizer of (seed, index): a counter-based generator, so any
// element can be drawn independently of the others.
__device__ __forceinline__ float HashUniform(uint64_t seed, uint64_t index) {
  uint64_t z = seed + (index + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

template <typename T>
__global__ void FillUniformKernel(T* dst, size_t count, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    dst[i] = FromFloat<T>(scale * HashUniform(seed, i));
  }
}

template <typename T>
__global__ void FillConstantKernel(T* dst, size_t count, float value) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    dst[i] = FromFloat<T>(value);
  }
}

template <typename T>
__global__ void EmbedKernel(const T* table, const int* ids, int dim, float* hidden) {
  const T* row = table + static_cast<size_t>(ids[blockIdx.x]) * dim;
  float* out = hidden + static_cast<size_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = ToFloat(row[i]);
}

template <typename T>
__global__ void SwiGluKernel(const T* gate_up, int n, int hidden, T* out) {
  const size_t total = static_cast<size_t>(n) * hidden;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t t = i / hidden, j = i % hidden;
    const T* row = gate_up + t * 2 * hidden;
    float g = ToFloat(row[j]);
    // Same expression as the CPU engine (cpu_ops.h SwiGlu), full-precision exp.
    g *= 1.0f / (1.0f + expf(-g));
    out[i] = FromFloat<T>(g * ToFloat(row[hidden + j]));
  }
}

// One warp per (token, KV head, K|V) unit: the direction's norm, then both
// layers' rows.
template <typename T>
__global__ void ExpandMergedPairKernel(const T* kdir, const T* vdir, const float* norms, int n,
                                       int n_kv_heads, int head_dim, T* k_a, T* v_a, T* k_b,
                                       T* v_b) {
  const int lane = threadIdx.x & 31;
  const size_t warp = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) >> 5;
  const size_t units = static_cast<size_t>(n) * n_kv_heads * 2;
  if (warp >= units) return;  // whole warps exit together
  const size_t kv_dim = static_cast<size_t>(n_kv_heads) * head_dim;
  const size_t t = warp / (2 * n_kv_heads);
  const int h = static_cast<int>((warp / 2) % n_kv_heads);
  const int which = static_cast<int>(warp % 2);  // 0 = K, 1 = V
  const size_t offset = t * kv_dim + static_cast<size_t>(h) * head_dim;
  const T* dir = (which == 0 ? kdir : vdir) + offset;
  float ss = 0.0f;
  for (int i = lane; i < head_dim; i += 32) {
    const float x = ToFloat(dir[i]);
    ss += x * x;
  }
  ss = WarpSum(ss);
  const float norm = sqrtf(ss);
  const float* unit_norms = norms + (t * n_kv_heads + h) * 4;
  const float scale_a = norm > 0.0f ? unit_norms[2 * which] / norm : 0.0f;
  const float scale_b = norm > 0.0f ? unit_norms[2 * which + 1] / norm : 0.0f;
  T* out_a = (which == 0 ? k_a : v_a) + offset;
  T* out_b = (which == 0 ? k_b : v_b) + offset;
  for (int i = lane; i < head_dim; i += 32) {
    const float x = ToFloat(dir[i]);
    out_a[i] = FromFloat<T>(x * scale_a);
    out_b[i] = FromFloat<T>(x * scale_b);
  }
}

}  // namespace

cudaError_t FillUniform(DType dtype, void* dst, size_t count, uint64_t seed, float scale,
                        cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  return DispatchDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    FillUniformKernel<T><<<GridFor(count, kThreads, 8192), kThreads, 0, stream>>>(
        static_cast<T*>(dst), count, seed, scale);
    return cudaGetLastError();
  });
}

cudaError_t FillConstant(DType dtype, void* dst, size_t count, float value, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  return DispatchDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    FillConstantKernel<T><<<GridFor(count, kThreads, 8192), kThreads, 0, stream>>>(
        static_cast<T*>(dst), count, value);
    return cudaGetLastError();
  });
}

cudaError_t Embed(DType dtype, const void* table, const int* ids, int n, int dim, float* hidden,
                  cudaStream_t stream) {
  if (n <= 0 || dim <= 0) return cudaErrorInvalidValue;
  return DispatchDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    EmbedKernel<T><<<n, kThreads, 0, stream>>>(static_cast<const T*>(table), ids, dim, hidden);
    return cudaGetLastError();
  });
}

cudaError_t SwiGlu(DType dtype, const void* gate_up, int n, int hidden, void* out,
                   cudaStream_t stream) {
  if (n <= 0 || hidden <= 0) return cudaErrorInvalidValue;
  const size_t total = static_cast<size_t>(n) * hidden;
  return DispatchDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    SwiGluKernel<T><<<GridFor(total, kThreads, 8192), kThreads, 0, stream>>>(
        static_cast<const T*>(gate_up), n, hidden, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

cudaError_t ExpandMergedPair(DType dtype, const void* kdir, const void* vdir, const float* norms,
                             int n, int n_kv_heads, int head_dim, void* k_a, void* v_a, void* k_b,
                             void* v_b, cudaStream_t stream) {
  if (n <= 0 || n_kv_heads <= 0 || head_dim <= 0) return cudaErrorInvalidValue;
  const size_t threads = static_cast<size_t>(n) * n_kv_heads * 2 * 32;
  const size_t blocks = (threads + kThreads - 1) / kThreads;
  if (blocks > 0x7fffffffu) return cudaErrorInvalidValue;
  return DispatchDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    ExpandMergedPairKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<const T*>(kdir), static_cast<const T*>(vdir), norms, n, n_kv_heads, head_dim,
        static_cast<T*>(k_a), static_cast<T*>(v_a), static_cast<T*>(k_b), static_cast<T*>(v_b));
    return cudaGetLastError();
  });
}

}  // namespace krul::cuda_kernels
