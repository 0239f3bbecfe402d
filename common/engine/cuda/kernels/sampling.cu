// Picking the next token on the device, so a decode step copies one int to
// the host instead of the whole logits row. Both kernels run as a single
// block: a vocabulary is at most a few hundred thousand entries.
#include <climits>

#include "device_util.cuh"

namespace krul::cuda_kernels {
namespace {

constexpr int kThreads = 1024;

__global__ void ArgmaxKernel(const float* logits, int n, int* out) {
  __shared__ float best_value[kThreads];
  __shared__ int best_index[kThreads];
  float bv = -INFINITY;
  int bi = INT_MAX;
  // Each thread visits increasing indices: a strict > keeps its first maximum.
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = logits[i];
    if (v > bv || (bi == INT_MAX && v == bv)) {
      bv = v;
      bi = i;
    }
  }
  best_value[threadIdx.x] = bv;
  best_index[threadIdx.x] = bi;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      const float ov = best_value[threadIdx.x + stride];
      const int oi = best_index[threadIdx.x + stride];
      const float mv = best_value[threadIdx.x];
      const int mi = best_index[threadIdx.x];
      if (ov > mv || (ov == mv && oi < mi)) {
        best_value[threadIdx.x] = ov;
        best_index[threadIdx.x] = oi;
      }
    }
    __syncthreads();
  }
  // Only NaNs: like the CPU's ArgMax, index 0.
  if (threadIdx.x == 0) *out = best_index[0] == INT_MAX ? 0 : best_index[0];
}

__global__ void SampleKernel(const float* logits, int n, float temperature, float uniform,
                             int* out) {
  __shared__ float chunk_sum[kThreads];
  __shared__ float chunk_prefix[kThreads];
  __shared__ float total;
  __shared__ int result;
  float mx = -FLT_MAX;
  for (int i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, logits[i]);
  mx = BlockMax(mx);
  // Thread t owns the contiguous chunk [t * chunk, (t + 1) * chunk).
  const int chunk = (n + blockDim.x - 1) / blockDim.x;
  const int lo = min(n, static_cast<int>(threadIdx.x) * chunk), hi = min(n, lo + chunk);
  float local = 0.0f;
  for (int i = lo; i < hi; ++i) local += expf((logits[i] - mx) / temperature);
  chunk_sum[threadIdx.x] = local;
  if (threadIdx.x == 0) result = -1;
  __syncthreads();
  if (threadIdx.x == 0) {
    float running = 0.0f;
    for (int t = 0; t < static_cast<int>(blockDim.x); ++t) {
      chunk_prefix[t] = running;
      running += chunk_sum[t];
    }
    total = running;
  }
  __syncthreads();
  const float target = uniform * total;
  if (local > 0.0f && chunk_prefix[threadIdx.x] <= target &&
      target < chunk_prefix[threadIdx.x] + local) {
    // Re-add in the same order as `local`, relative to the chunk's start.
    const float want = target - chunk_prefix[threadIdx.x];
    float c = 0.0f;
    int pick = -1, last_positive = -1;
    for (int i = lo; i < hi; ++i) {
      const float p = expf((logits[i] - mx) / temperature);
      if (p > 0.0f) last_positive = i;
      c += p;
      if (c > want) {
        pick = i;
        break;
      }
    }
    result = pick >= 0 ? pick : last_positive;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int r = result;
    if (r < 0) {  // rounding put the target past the end: the last possible token
      for (int i = n - 1; i >= 0; --i) {
        if (expf((logits[i] - mx) / temperature) > 0.0f) {
          r = i;
          break;
        }
      }
    }
    *out = r < 0 ? 0 : r;
  }
}

}  // namespace

cudaError_t Argmax(const float* logits, int n, int* out, cudaStream_t stream) {
  if (n <= 0) return cudaErrorInvalidValue;
  ArgmaxKernel<<<1, kThreads, 0, stream>>>(logits, n, out);
  return cudaGetLastError();
}

cudaError_t SampleFromLogits(const float* logits, int n, float temperature, float uniform, int* out,
                             cudaStream_t stream) {
  if (n <= 0 || !(temperature > 0.0f) || !(uniform >= 0.0f) || !(uniform < 1.0f)) {
    return cudaErrorInvalidValue;
  }
  SampleKernel<<<1, kThreads, 0, stream>>>(logits, n, temperature, uniform, out);
  return cudaGetLastError();
}

}  // namespace krul::cuda_kernels
