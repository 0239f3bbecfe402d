// Attention kernels.
//
// FusedAttention: causal grouped-query attention without a score matrix.
// A block takes 32 consecutive queries of one head; each query is owned by
// TPQ threads (head_size / 32 of them for head_size > 32, else one), each
// holding every TPQ-th element of the query and of the output accumulator
// (interleaved so the threads of a query read consecutive shared-memory
// words: no bank conflicts). Keys and values stream through shared memory
// in tiles of 32; each key's score s updates the query's running maximum m,
// sum l and accumulator (online softmax):
//   m' = max(m, s);  l' = l e^(m - m') + e^(s - m');
//   acc' = acc e^(m - m') + e^(s - m') v;  out = acc / l.
// Plain fp32 arithmetic on the CUDA cores: simple and exact enough to check
// against the CPU engine. The engine's default for long prefills is the
// cuBLAS path (tensor cores) with CausalSoftmax below; see engine_cuda.cc.
//
// CausalSoftmax: one block per score row.
#include "device_util.cuh"

namespace krul::cuda_kernels {
namespace {

constexpr int kQueriesPerBlock = 32;
constexpr int kKeyTile = 32;

template <typename T, int kHeadSize>
__global__ void FusedAttentionKernel(const T* q, int q_ld, const T* keys, const T* values,
                                     int kv_ld, int n, int pos0, int group, float scale, T* out,
                                     int out_ld) {
  constexpr int kDimsPerThread = kHeadSize < 32 ? kHeadSize : 32;
  constexpr int kThreadsPerQuery = kHeadSize / kDimsPerThread;
  __shared__ float k_tile[kKeyTile][kHeadSize];
  __shared__ float v_tile[kKeyTile][kHeadSize];

  const int tid = threadIdx.x;
  const int part = tid % kThreadsPerQuery;
  const int block_q0 = static_cast<int>(blockIdx.x) * kQueriesPerBlock;
  const int t = block_q0 + tid / kThreadsPerQuery;  // query index in [0, n)
  const bool valid = t < n;
  const int pos = pos0 + t;
  const int h = static_cast<int>(blockIdx.y);
  const int g = h / group;
  const int last_t = min(n, block_q0 + kQueriesPerBlock) - 1;
  const int last_key = pos0 + last_t;  // the block's largest causal limit

  float qv[kDimsPerThread], acc[kDimsPerThread];
#pragma unroll
  for (int i = 0; i < kDimsPerThread; ++i) {
    const int d = i * kThreadsPerQuery + part;
    qv[i] = valid ? ToFloat(q[static_cast<size_t>(t) * q_ld + h * kHeadSize + d]) : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;

  for (int k0 = 0; k0 <= last_key; k0 += kKeyTile) {
    for (int idx = tid; idx < kKeyTile * kHeadSize; idx += blockDim.x) {
      const int j = idx / kHeadSize, d = idx % kHeadSize;
      const int key = k0 + j;
      float kx = 0.0f, vx = 0.0f;
      if (key <= last_key) {
        const size_t off = static_cast<size_t>(key) * kv_ld + g * kHeadSize + d;
        kx = ToFloat(keys[off]);
        vx = ToFloat(values[off]);
      }
      k_tile[j][d] = kx;
      v_tile[j][d] = vx;
    }
    __syncthreads();

    // Keys one at a time (a loop the compiler keeps rolled: compile time),
    // each folded into the running maximum, sum and accumulator.
    const int tile_keys = min(kKeyTile, last_key - k0 + 1);
#pragma unroll 1
    for (int j = 0; j < tile_keys; ++j) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < kDimsPerThread; ++i)
        dot += qv[i] * k_tile[j][i * kThreadsPerQuery + part];
        // The threads of one query are consecutive lanes of one warp.
#pragma unroll
      for (int offset = kThreadsPerQuery / 2; offset > 0; offset >>= 1) {
        dot += __shfl_xor_sync(0xffffffffu, dot, offset);
      }
      if (valid && k0 + j <= pos) {
        const float s = dot * scale;
        const float m_new = fmaxf(m, s);
        const float correction = expf(m - m_new);  // 0 for the first key (m = -inf)
        const float p = expf(s - m_new);
        l = l * correction + p;
#pragma unroll
        for (int i = 0; i < kDimsPerThread; ++i) {
          acc[i] = acc[i] * correction + p * v_tile[j][i * kThreadsPerQuery + part];
        }
        m = m_new;
      }
    }
    __syncthreads();
  }
  if (valid) {
    const float inv = 1.0f / l;
#pragma unroll
    for (int i = 0; i < kDimsPerThread; ++i) {
      const int d = i * kThreadsPerQuery + part;
      out[static_cast<size_t>(t) * out_ld + h * kHeadSize + d] = FromFloat<T>(acc[i] * inv);
    }
  }
}

template <typename T, int kHeadSize>
cudaError_t LaunchFused(const void* q, int q_ld, const void* keys, const void* values, int kv_ld,
                        int n, int pos0, int n_heads, int group, float scale, void* out, int out_ld,
                        cudaStream_t stream) {
  constexpr int kThreadsPerQuery = kHeadSize < 32 ? 1 : kHeadSize / 32;
  const dim3 grid((n + kQueriesPerBlock - 1) / kQueriesPerBlock, n_heads);
  FusedAttentionKernel<T, kHeadSize><<<grid, kQueriesPerBlock * kThreadsPerQuery, 0, stream>>>(
      static_cast<const T*>(q), q_ld, static_cast<const T*>(keys), static_cast<const T*>(values),
      kv_ld, n, pos0, group, scale, static_cast<T*>(out), out_ld);
  return cudaGetLastError();
}

template <typename T>
__global__ void CausalSoftmaxKernel(float* scores, int nq, int ctx, int query_begin, T* probs) {
  const size_t r = blockIdx.x;  // row (h, q)
  const int q = static_cast<int>(r % nq);
  const int limit = min(ctx, query_begin + q + 1);  // keys [0, limit) are visible
  float* row = scores + r * ctx;
  float mx = -FLT_MAX;
  for (int k = threadIdx.x; k < limit; k += blockDim.x) mx = fmaxf(mx, row[k]);
  mx = BlockMax(mx);
  float sum = 0.0f;
  for (int k = threadIdx.x; k < limit; k += blockDim.x) {
    const float e = expf(row[k] - mx);
    row[k] = e;
    sum += e;
  }
  sum = BlockSum(sum);
  T* prow = probs != nullptr ? probs + r * ctx : nullptr;
  for (int k = threadIdx.x; k < ctx; k += blockDim.x) {
    const float p = k < limit ? row[k] / sum : 0.0f;
    row[k] = p;
    if (prow != nullptr) prow[k] = FromFloat<T>(p);
  }
}

}  // namespace

bool FusedAttentionSupports(int head_size) {
  return head_size == 8 || head_size == 16 || head_size == 32 || head_size == 64 ||
         head_size == 128;
}

cudaError_t FusedAttention(DType dtype, const void* q, int q_ld, const void* keys,
                           const void* values, int kv_ld, int n, int pos0, int n_heads,
                           int n_kv_heads, int head_size, float scale, void* out, int out_ld,
                           cudaStream_t stream) {
  if (n <= 0 || pos0 < 0 || n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads != 0 ||
      !FusedAttentionSupports(head_size) || n_heads > 65535) {
    return cudaErrorInvalidValue;
  }
  const int group = n_heads / n_kv_heads;
  return DispatchDType(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    switch (head_size) {
      case 8:
        return LaunchFused<T, 8>(q, q_ld, keys, values, kv_ld, n, pos0, n_heads, group, scale, out,
                                 out_ld, stream);
      case 16:
        return LaunchFused<T, 16>(q, q_ld, keys, values, kv_ld, n, pos0, n_heads, group, scale, out,
                                  out_ld, stream);
      case 32:
        return LaunchFused<T, 32>(q, q_ld, keys, values, kv_ld, n, pos0, n_heads, group, scale, out,
                                  out_ld, stream);
      case 64:
        return LaunchFused<T, 64>(q, q_ld, keys, values, kv_ld, n, pos0, n_heads, group, scale, out,
                                  out_ld, stream);
      case 128:
        return LaunchFused<T, 128>(q, q_ld, keys, values, kv_ld, n, pos0, n_heads, group, scale,
                                   out, out_ld, stream);
    }
    return cudaErrorInvalidValue;
  });
}

cudaError_t CausalSoftmax(DType dtype, float* scores, int n_heads, int nq, int ctx, int query_begin,
                          void* probs, cudaStream_t stream) {
  if (n_heads <= 0 || nq <= 0 || ctx <= 0 || query_begin < 0) return cudaErrorInvalidValue;
  const size_t rows = static_cast<size_t>(n_heads) * nq;
  if (rows > 0x7fffffffu) return cudaErrorInvalidValue;
  return DispatchDType(dtype, [&](auto tag) {
    using T = decltype(tag);
    CausalSoftmaxKernel<T><<<static_cast<unsigned>(rows), 256, 0, stream>>>(
        scores, nq, ctx, query_begin, static_cast<T*>(probs));
    return cudaGetLastError();
  });
}

}  // namespace krul::cuda_kernels
