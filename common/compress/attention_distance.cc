// Kernels of the similarity estimator: squared distances between attention
// rows of layer pairs, and attention mass over windows of a row (see
// attention_distance.h).
#include "attention_distance.h"

#include <algorithm>
#include <cmath>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KRUL_ESTIMATOR_AVX2 1
#endif

namespace krul::internal {
namespace {

// out[c] = sum over i < n of (a[i] - b[c][i])^2 for c < N (1 <= N <= 4).
// The rows of several layers are compared against one row at a time: `a`
// is loaded once for all of them, and the N sums are independent
// dependency chains, so the FMA latency is hidden. fp32 lanes, as the rows
// are fp32; callers accumulate the per-row results in double. The result
// of a pair depends only on N and its position in the group, and groups are
// formed the same way whatever thread runs them, so D is reproducible.
template <int N>
void SquaredDistances(const float* a, const float* const* b, int n, float* out) {
  if constexpr (N == 1) {
    // One pair: two chains over the two halves of the row.
    const int h = n / 2;
    const float* b0 = b[0];
    float s0 = 0.0f, s1 = 0.0f;
#pragma omp simd reduction(+ : s0, s1)
    for (int i = 0; i < h; ++i) {
      const float d0 = a[i] - b0[i], d1 = a[h + i] - b0[h + i];
      s0 += d0 * d0;
      s1 += d1 * d1;
    }
    if (n % 2 != 0) {
      const float d = a[n - 1] - b0[n - 1];
      s1 += d * d;
    }
    out[0] = s0 + s1;
  } else {
    const float* b0 = b[0];
    const float* b1 = b[1];
    const float* b2 = b[N > 2 ? 2 : 1];
    const float* b3 = b[N > 3 ? 3 : 1];
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int i = 0; i < n; ++i) {
      const float x = a[i];
      const float d0 = x - b0[i], d1 = x - b1[i];
      s0 += d0 * d0;
      s1 += d1 * d1;
      if constexpr (N > 2) {
        const float d2 = x - b2[i];
        s2 += d2 * d2;
      }
      if constexpr (N > 3) {
        const float d3 = x - b3[i];
        s3 += d3 * d3;
      }
    }
    out[0] = s0;
    out[1] = s1;
    if constexpr (N > 2) out[2] = s2;
    if constexpr (N > 3) out[3] = s3;
  }
}

float Sum(const float* a, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i];
  return s;
}

#ifdef KRUL_ESTIMATOR_AVX2
// The first `count` (< 8) floats at p, zeros after (no read past the end).
inline __m256 LoadFirst(const float* p, int count) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane));
}

inline double HorizontalSum(__m256 v) {
  const __m256d d = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                                  _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd(d, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}
#endif

// sums[i * stride + j] += (a[i][k] - b[j][k])^2 over k < n, lane-wise, for
// i < NA, j < NB; with kSelf (b == a, NA == NB) only for i < j.
template <int NA, int NB, bool kSelf>
void TileSquaredDistances(const float* const* a, const float* const* b, int n, LaneSums* sums,
                          int stride) {
  static_assert(!kSelf || NA == NB);
  constexpr auto wanted = [](int i, int j) { return !kSelf || i < j; };
#ifdef KRUL_ESTIMATOR_AVX2
  __m256 acc[NA][NB];
  for (int i = 0; i < NA; ++i) {
    for (int j = 0; j < NB; ++j) {
      acc[i][j] = wanted(i, j) ? _mm256_load_ps(sums[i * stride + j].v) : _mm256_setzero_ps();
    }
  }
  auto step = [&](const __m256* va, const __m256* vb) {
    for (int j = 0; j < NB; ++j) {
      for (int i = 0; i < NA; ++i) {
        if (!wanted(i, j)) continue;
        const __m256 d = _mm256_sub_ps(va[i], vb[j]);
        acc[i][j] = _mm256_fmadd_ps(d, d, acc[i][j]);
      }
    }
  };
  int k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    __m256 va[NA], vb[NB];
    for (int i = 0; i < NA; ++i) va[i] = _mm256_loadu_ps(a[i] + k);
    if constexpr (kSelf) {
      step(va, va);
    } else {
      for (int j = 0; j < NB; ++j) vb[j] = _mm256_loadu_ps(b[j] + k);
      step(va, vb);
    }
  }
  if (k < n) {
    __m256 va[NA], vb[NB];
    for (int i = 0; i < NA; ++i) va[i] = LoadFirst(a[i] + k, n - k);
    if constexpr (kSelf) {
      step(va, va);
    } else {
      for (int j = 0; j < NB; ++j) vb[j] = LoadFirst(b[j] + k, n - k);
      step(va, vb);
    }
  }
  for (int i = 0; i < NA; ++i) {
    for (int j = 0; j < NB; ++j) {
      if (wanted(i, j)) _mm256_store_ps(sums[i * stride + j].v, acc[i][j]);
    }
  }
#else
  for (int i = 0; i < NA; ++i) {
    for (int j = 0; j < NB; ++j) {
      if (!wanted(i, j)) continue;
      const float* x = a[i];
      const float* y = b[j];
      float s[kLanes] = {};
      for (int k = 0; k < n; ++k) {
        const float d = x[k] - y[k];
        s[k % kLanes] += d * d;
      }
      for (int lane = 0; lane < kLanes; ++lane) sums[i * stride + j].v[lane] += s[lane];
    }
  }
#endif
}

template <int NA>
TileFn RectTileFor(int nb) {
  switch (nb) {
    case 1:
      return &TileSquaredDistances<NA, 1, false>;
    case 2:
      return &TileSquaredDistances<NA, 2, false>;
    case 3:
      return &TileSquaredDistances<NA, 3, false>;
    default:
      return &TileSquaredDistances<NA, 4, false>;
  }
}

}  // namespace

void SquaredDistanceGroup(const float* a, const float* const* b, int count, int n, float* out) {
  switch (count) {
    case 1:
      SquaredDistances<1>(a, b, n, out);
      break;
    case 2:
      SquaredDistances<2>(a, b, n, out);
      break;
    case 3:
      SquaredDistances<3>(a, b, n, out);
      break;
    default:
      SquaredDistances<4>(a, b, n, out);
      break;
  }
}

double LaneTotal(const LaneSums& s) {
#ifdef KRUL_ESTIMATOR_AVX2
  return HorizontalSum(_mm256_load_ps(s.v));
#else
  double t = 0;
  for (float x : s.v) t += x;
  return t;
#endif
}

TileFn TileKernel(int na, int nb, bool self) {
  if (self) {
    switch (na) {
      case 2:
        return &TileSquaredDistances<2, 2, true>;
      case 3:
        return &TileSquaredDistances<3, 3, true>;
      default:
        return &TileSquaredDistances<4, 4, true>;
    }
  }
  switch (na) {
    case 1:
      return RectTileFor<1>(nb);
    case 2:
      return RectTileFor<2>(nb);
    case 3:
      return RectTileFor<3>(nb);
    default:
      return RectTileFor<4>(nb);
  }
}

float SumWindows(const float* base, int rows, size_t stride, int begin, int len) {
#ifdef KRUL_ESTIMATOR_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (int r = 0; r < rows; ++r) {
    const float* p = base + r * stride + begin;
    int k = 0;
    for (; k + 2 * kLanes <= len; k += 2 * kLanes) {
      acc0 = _mm256_add_ps(acc0, _mm256_loadu_ps(p + k));
      acc1 = _mm256_add_ps(acc1, _mm256_loadu_ps(p + k + kLanes));
    }
    if (k + kLanes <= len) {
      acc0 = _mm256_add_ps(acc0, _mm256_loadu_ps(p + k));
      k += kLanes;
    }
    if (k < len) acc1 = _mm256_add_ps(acc1, LoadFirst(p + k, len - k));
  }
  return static_cast<float>(HorizontalSum(_mm256_add_ps(acc0, acc1)));
#else
  float s = 0.0f;
  for (int r = 0; r < rows; ++r) s += Sum(base + r * stride + begin, len);
  return s;
#endif
}

int EdgeWindow(double fraction, int ctx) {
  return std::max(1, static_cast<int>(std::ceil(fraction * ctx - 1e-9)));
}

void AddEdgeMass(const float* row, int ctx, double fraction, double weight, double& first,
                 double& last) {
  const int w = std::min(ctx, EdgeWindow(fraction, ctx));
  const int last_begin = std::max(w, ctx - w);
  first += weight * Sum(row, w);
  last += weight * Sum(row + last_begin, ctx - last_begin);
}

}  // namespace krul::internal
