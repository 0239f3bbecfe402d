// Kernels of the similarity estimator (internal): squared Euclidean
// distances between the attention rows of layers, and the attention mass on
// windows of a row. fp32 arithmetic with AVX2 + FMA when the compiler
// targets them (plain loops otherwise); callers accumulate in double.
// Every result depends only on the arguments (never on the thread that
// computes it), so the estimator's D is reproducible.
#ifndef KRUL_COMMON_COMPRESS_ATTENTION_DISTANCE_H_
#define KRUL_COMMON_COMPRESS_ATTENTION_DISTANCE_H_

#include <cstddef>

namespace krul::internal {

// Rows compared against one row at once by SquaredDistanceGroup.
constexpr int kDistanceGroup = 4;

// out[c] = sum over i < n of (a[i] - b[c][i])^2 for c < count, 1 <= count
// <= kDistanceGroup: `a` is loaded once for all of them (prefill rows).
void SquaredDistanceGroup(const float* a, const float* const* b, int count, int n, float* out);

// The decode kernel. A decode token's rows of every layer are compared at
// once, when its last layer arrives: all layer pairs over one chunk of the
// rows (a few KB per layer, so every layer's chunk stays in L1) before the
// next chunk. Compared with one new layer against all stored ones as it
// arrives, each stored row is read from L2 once per token instead of once
// per later layer, and register tiles of kTile x kTile layers need one load
// per 2 multiply-adds.

// Lanes of one layer pair's running sum (one 8-float vector).
constexpr int kLanes = 8;
struct alignas(32) LaneSums {
  float v[kLanes];
};

// Layers per side of a register tile.
constexpr int kTile = 4;

// The sum of a pair's lanes, in double.
double LaneTotal(const LaneSums& s);

// sums[i * stride + j] += (a[i][k] - b[j][k])^2 over k < n, lane-wise, for
// i < na, j < nb (only i < j for a block against itself).
using TileFn = void (*)(const float* const* a, const float* const* b, int n, LaneSums* sums,
                        int stride);

// The kernel for a block of `na` layers against another block of `nb`
// (1 <= na, nb <= kTile), or against itself (`self`, na == nb >= 2).
TileFn TileKernel(int na, int nb, bool self);

// Sum of the entries [begin, begin + len) of `rows` rows `stride` apart: the
// edge windows of all of a layer's heads with one vector reduction.
float SumWindows(const float* base, int rows, size_t stride, int begin, int len);

// Width of the "first" / "last" window of a row over `ctx` keys:
// ceil(fraction * ctx), with a slack so 0.1 * 10 counts as exactly 1.
int EdgeWindow(double fraction, int ctx);

// Adds weight * the first / last window masses of one row (ctx valid keys).
// The windows never overlap: first = [0, w), last = [max(w, ctx - w), ctx).
void AddEdgeMass(const float* row, int ctx, double fraction, double weight, double& first,
                 double& last);

}  // namespace krul::internal

#endif  // KRUL_COMMON_COMPRESS_ATTENTION_DISTANCE_H_
