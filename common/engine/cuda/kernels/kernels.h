// Launchers of the CUDA backend's own kernels. Internal to krul_cuda_kernels.
//
// Every launcher enqueues its work on `stream`, never synchronizes, and
// returns the launch error (cudaGetLastError); an unsupported argument
// returns cudaErrorInvalidValue before anything is launched. Buffers typed
// `void*` hold elements of `dtype` (fp32, fp16 or bf16); `float*` buffers
// are fp32 whatever the dtype. Matrices are row-major. All pointers are
// device pointers unless a comment says otherwise.
//
// This header is plain C++ (no CUDA syntax) so the host code compiled by the
// C++ compiler can include it; the kernels live in the .cu files beside it.
#ifndef KRUL_COMMON_ENGINE_CUDA_KERNELS_KERNELS_H_
#define KRUL_COMMON_ENGINE_CUDA_KERNELS_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "krul/base/dtype.h"

namespace krul::cuda_kernels {

// ---- swiglu.cu: element-wise kernels ---------------------------------------

// dst[i] = scale * u_i, u_i uniform in [-1, 1) from a counter-based hash of
// (seed, i): the same seed gives the same values on every GPU.
cudaError_t FillUniform(DType dtype, void* dst, size_t count, uint64_t seed, float scale,
                        cudaStream_t stream);
// dst[i] = value. `dst` is `dtype` (f32 when dtype is kF32).
cudaError_t FillConstant(DType dtype, void* dst, size_t count, float value, cudaStream_t stream);

// hidden (n, dim) fp32 = table[ids[t]] (table: (vocab, dim) dtype). Ids were
// validated on the host.
cudaError_t Embed(DType dtype, const void* table, const int* ids, int n, int dim, float* hidden,
                  cudaStream_t stream);

// out (n, hidden) = silu(gate) * up, where row t of `gate_up` (n, 2 * hidden)
// holds gate in [0, hidden) and up in [hidden, 2 * hidden); silu(g) =
// g / (1 + e^-g), evaluated in fp32.
cudaError_t SwiGlu(DType dtype, const void* gate_up, int n, int hidden, void* out,
                   cudaStream_t stream);

// Restores both layers of a shared pair (compressor.h, merged segment without
// retained units) for n tokens: per token t, KV head h and tensor (K, V), the
// direction row dir[t, h*d:(h+1)*d] is renormalized and scaled by the stored
// norm: layer a gets |x_a| * dir / |dir|, layer b |x_b| * dir / |dir|.
// kdir, vdir: (n, n_kv_heads * head_dim) dtype; norms: (n, n_kv_heads, 4)
// fp32 = |K_a| |K_b| |V_a| |V_b|. Outputs are cache rows (stride kv_dim).
cudaError_t ExpandMergedPair(DType dtype, const void* kdir, const void* vdir, const float* norms,
                             int n, int n_kv_heads, int head_dim, void* k_a, void* v_a, void* k_b,
                             void* v_b, cudaStream_t stream);

// ---- rmsnorm.cu -------------------------------------------------------------

// out (rows, dim) dtype = weight * x / sqrt(mean(x^2) + eps), x fp32.
cudaError_t RmsNorm(DType dtype, const float* x, const float* weight, int rows, int dim, float eps,
                    void* out, cudaStream_t stream);

// ---- rope.cu ----------------------------------------------------------------

// Splits the fused projection output qkv (n, qkv_ld) dtype, whose row holds
// q (n_heads * head_size) | k (n_kv_heads * head_size) | v (same), into
// q_out (n, n_heads * head_size) and the cache rows k_out, v_out (n, kv_dim
// = n_kv_heads * head_size), rotating the adjacent pairs (2i, 2i+1),
// i < rotary_dim / 2, of every q and k head by the angles whose cosines and
// sines are cos[t * half + i], sin[t * half + i] (half = rotary_dim / 2;
// the tables start at the block's first position).
cudaError_t RopeScatter(DType dtype, const void* qkv, int qkv_ld, int n, int n_heads,
                        int n_kv_heads, int head_size, int rotary_dim, const float* cos,
                        const float* sin, void* q_out, void* k_out, void* v_out,
                        cudaStream_t stream);

// ---- attention.cu -----------------------------------------------------------

// Whether FusedAttention has a kernel for this head size (8, 16, 32, 64, 128).
bool FusedAttentionSupports(int head_size);

// Causal grouped-query attention of n queries at positions [pos0, pos0 + n)
// over keys/values [0, pos0 + n) of one layer, without materializing scores:
// each block keeps a running maximum and sum (online softmax) over key tiles.
// q: (n, q_ld) dtype, head h at column h * head_size; keys, values: cache
// rows (>= pos0 + n, kv_ld) dtype, KV head g at column g * head_size; query
// head h reads KV head h / (n_heads / n_kv_heads). out: (n, out_ld) dtype.
cudaError_t FusedAttention(DType dtype, const void* q, int q_ld, const void* keys,
                           const void* values, int kv_ld, int n, int pos0, int n_heads,
                           int n_kv_heads, int head_size, float scale, void* out, int out_ld,
                           cudaStream_t stream);

// Row-wise causal softmax of scores (n_heads, nq, ctx) fp32, in place: row
// (h, q) keeps keys [0, query_begin + q] (softmax over them) and is zeroed
// beyond. When `probs` is not null it also receives the result as dtype
// (same layout), the operand of the probabilities x values product.
cudaError_t CausalSoftmax(DType dtype, float* scores, int n_heads, int nq, int ctx, int query_begin,
                          void* probs, cudaStream_t stream);

// ---- sampling.cu ------------------------------------------------------------

// *out = index of the largest of logits[0, n) (the first one on ties; NaNs
// never win).
cudaError_t Argmax(const float* logits, int n, int* out, cudaStream_t stream);

// *out = the token whose cumulative probability under softmax(logits /
// temperature) first reaches uniform * total (inverse-CDF sampling with a
// caller-drawn uniform in [0, 1)). temperature > 0.
cudaError_t SampleFromLogits(const float* logits, int n, float temperature, float uniform, int* out,
                             cudaStream_t stream);

// ---- estimator.cu: decode side of the similarity estimator -----------------

// Largest layer count DecodePairDistances supports (its tile lives in 48 KB
// of shared memory together with one accumulator per pair).
int DecodeEstimatorMaxLayers();

// rows: (n_layers, n_rows, cap) fp32, row r of layer l holds the attention
// probabilities of one (sampled) query head over keys [0, ctx).
// For each of the n_pairs pairs (pairs[2p], pairs[2p+1]) of layers, adds
//   sum over rows r and keys k < ctx of row_weights[r] * (A_a[r,k] - A_b[r,k])^2
// to distance[a * n_layers + b] and distance[b * n_layers + a] (fp64,
// n_layers x n_layers). `partial` is scratch of num_blocks * n_pairs floats.
cudaError_t DecodePairDistances(const float* rows, int n_layers, int n_rows, int cap, int ctx,
                                const float* row_weights, const int* pairs, int n_pairs,
                                float* partial, int num_blocks, double* distance,
                                cudaStream_t stream);

// For each of the n_list layers layer_list[i]: adds the weighted attention
// mass on keys [0, first_end) to first[layer] and on [last_begin, ctx) to
// last[layer] (fp64, indexed by layer).
cudaError_t DecodeEdgeMass(const float* rows, const int* layer_list, int n_list, int n_rows,
                           int cap, int ctx, int first_end, int last_begin,
                           const float* row_weights, double* first, double* last,
                           cudaStream_t stream);

}  // namespace krul::cuda_kernels

#endif  // KRUL_COMMON_ENGINE_CUDA_KERNELS_KERNELS_H_
