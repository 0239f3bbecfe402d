// Decode side of the similarity estimator: the layer-distance matrix and the
// edge masses of one decoded token, from its attention rows of every layer,
// accumulated on the device (similarity_estimator.h defines the quantities).
//
// DecodePairDistances reads each element of the rows once: a block loads a
// tile of TW keys of every layer into shared memory (rows padded by one word
// against bank conflicts) and each thread updates the pairs it owns; blocks
// walk the tiles grid-stride and write one partial sum per pair, and a
// second kernel adds the partials (in block order: deterministic) into D.
#include "device_util.cuh"

namespace krul::cuda_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kSharedFloats = 48 * 1024 / 4;  // the default dynamic shared-memory limit

// Tile width for n_layers layers and n_pairs accumulators; 0 if none fits.
int TileWidth(int n_layers, int n_pairs) {
  const int room = kSharedFloats - n_pairs - n_layers;  // minus accumulators and padding
  if (room <= 0) return 0;
  int tw = room / (n_layers + 1);  // + 1: the per-column weights
  if (tw > 256) tw = 256;
  return tw >= 8 ? tw : 0;
}

__global__ void PairPartialsKernel(const float* rows, int n_layers, int n_rows, int cap, int ctx,
                                   const float* row_weights, const int* pairs, int n_pairs, int tw,
                                   float* partial) {
  extern __shared__ float shared[];
  const int pitch = tw + 1;
  float* tile = shared;                      // (n_layers, pitch)
  float* weights = tile + n_layers * pitch;  // (tw)
  float* acc = weights + tw;                 // (n_pairs)
  const size_t elements = static_cast<size_t>(n_rows) * ctx;
  const size_t tiles = (elements + tw - 1) / tw;
  for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) acc[p] = 0.0f;
  for (size_t tile_index = blockIdx.x; tile_index < tiles; tile_index += gridDim.x) {
    const size_t e0 = tile_index * tw;
    for (int idx = threadIdx.x; idx < n_layers * tw; idx += blockDim.x) {
      const int l = idx / tw, j = idx % tw;
      const size_t e = e0 + j;
      float v = 0.0f;
      if (e < elements) {
        const size_t r = e / ctx, k = e % ctx;
        v = rows[(static_cast<size_t>(l) * n_rows + r) * cap + k];
      }
      tile[l * pitch + j] = v;
    }
    for (int j = threadIdx.x; j < tw; j += blockDim.x) {
      const size_t e = e0 + j;
      weights[j] = e < elements ? row_weights[e / ctx] : 0.0f;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) {
      const float* a = tile + pairs[2 * p] * pitch;
      const float* b = tile + pairs[2 * p + 1] * pitch;
      float s = 0.0f;
      for (int j = 0; j < tw; ++j) {
        const float d = a[j] - b[j];
        s += weights[j] * d * d;
      }
      acc[p] += s;
    }
    __syncthreads();
  }
  for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) {
    partial[static_cast<size_t>(blockIdx.x) * n_pairs + p] = acc[p];
  }
}

__global__ void ReducePairsKernel(const float* partial, int num_blocks, const int* pairs,
                                  int n_pairs, int n_layers, double* distance) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= n_pairs) return;
  double s = 0.0;
  for (int b = 0; b < num_blocks; ++b) s += partial[static_cast<size_t>(b) * n_pairs + p];
  const int a = pairs[2 * p], c = pairs[2 * p + 1];
  distance[static_cast<size_t>(a) * n_layers + c] += s;
  distance[static_cast<size_t>(c) * n_layers + a] += s;
}

__global__ void EdgeMassKernel(const float* rows, const int* layer_list, int n_rows, int cap,
                               int ctx, int first_end, int last_begin, const float* row_weights,
                               double* first, double* last) {
  const int layer = layer_list[blockIdx.x];
  const float* base = rows + static_cast<size_t>(layer) * n_rows * cap;
  const int first_width = first_end, last_width = ctx - last_begin;
  float f = 0.0f, l = 0.0f;
  for (int r = 0; r < n_rows; ++r) {
    const float* row = base + static_cast<size_t>(r) * cap;
    const float w = row_weights[r];
    for (int k = threadIdx.x; k < first_width; k += blockDim.x) f += w * row[k];
    for (int k = threadIdx.x; k < last_width; k += blockDim.x) l += w * row[last_begin + k];
  }
  f = BlockSum(f);
  l = BlockSum(l);
  if (threadIdx.x == 0) {
    first[layer] += f;
    last[layer] += l;
  }
}

}  // namespace

int DecodeEstimatorMaxLayers() {
  int l = 2;
  while (TileWidth(l + 1, (l + 1) * l / 2) > 0) ++l;
  return l;
}

cudaError_t DecodePairDistances(const float* rows, int n_layers, int n_rows, int cap, int ctx,
                                const float* row_weights, const int* pairs, int n_pairs,
                                float* partial, int num_blocks, double* distance,
                                cudaStream_t stream) {
  if (n_pairs == 0) return cudaSuccess;
  const int tw = TileWidth(n_layers, n_pairs);
  if (tw == 0 || n_rows <= 0 || ctx <= 0 || ctx > cap || num_blocks <= 0 || n_pairs < 0) {
    return cudaErrorInvalidValue;
  }
  const size_t shared_bytes =
      sizeof(float) * (static_cast<size_t>(n_layers) * (tw + 1) + tw + n_pairs);
  PairPartialsKernel<<<num_blocks, kThreads, shared_bytes, stream>>>(
      rows, n_layers, n_rows, cap, ctx, row_weights, pairs, n_pairs, tw, partial);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  ReducePairsKernel<<<(n_pairs + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
      partial, num_blocks, pairs, n_pairs, n_layers, distance);
  return cudaGetLastError();
}

cudaError_t DecodeEdgeMass(const float* rows, const int* layer_list, int n_list, int n_rows,
                           int cap, int ctx, int first_end, int last_begin,
                           const float* row_weights, double* first, double* last,
                           cudaStream_t stream) {
  if (n_list == 0) return cudaSuccess;
  if (n_list < 0 || n_rows <= 0 || ctx <= 0 || ctx > cap || first_end < 0 || first_end > ctx ||
      last_begin < 0 || last_begin > ctx) {
    return cudaErrorInvalidValue;
  }
  EdgeMassKernel<<<n_list, kThreads, 0, stream>>>(rows, layer_list, n_rows, cap, ctx, first_end,
                                                  last_begin, row_weights, first, last);
  return cudaGetLastError();
}

}  // namespace krul::cuda_kernels
