#include "matmul.h"

#include <algorithm>
#include <cstddef>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KRUL_MATMUL_AVX2 1
#endif

namespace krul::internal {
namespace {

constexpr int kRowGroup = 4;      // weight rows per micro-kernel
constexpr int kTokenGroup = 4;    // tokens per micro-kernel
constexpr int kTokenTile = 64;    // tokens kept hot in cache per pass over a row block
constexpr int kRowsPerTask = 16;  // minimum rows handed to one thread
// Multiply-adds below which handing work to another thread costs more than it
// saves (a wake-up is microseconds); tiny models run their products serially.
constexpr int64_t kMinMacsPerTask = 16 * 1024;

#ifdef KRUL_MATMUL_AVX2
inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
#endif

// y[t][r] for R rows starting at w and T tokens starting at x (row strides
// `in` for both, `out` for y). R and T are compile-time so the accumulators
// live in registers.
template <int R, int T>
inline void MicroKernel(const float* x, const float* w, int in, float* y, int out) {
  int i = 0;
  float acc[R][T] = {};
#ifdef KRUL_MATMUL_AVX2
  __m256 vacc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) vacc[r][t] = _mm256_setzero_ps();
  for (; i + 8 <= in; i += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(w + static_cast<size_t>(r) * in + i);
    for (int t = 0; t < T; ++t) {
      __m256 xv = _mm256_loadu_ps(x + static_cast<size_t>(t) * in + i);
      for (int r = 0; r < R; ++r) vacc[r][t] = _mm256_fmadd_ps(wv[r], xv, vacc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = HorizontalSum(vacc[r][t]);
#endif
  for (; i < in; ++i) {
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t)
        acc[r][t] += w[static_cast<size_t>(r) * in + i] * x[static_cast<size_t>(t) * in + i];
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[static_cast<size_t>(t) * out + r] = acc[r][t];
}

// One dot product of length n with four independent accumulators, so the
// FMA latency is hidden and each weight row streams through once. Decode
// (a single token) is bound by reading the weights; measured here, one row at
// a time streams faster than interleaving several rows.
inline float DotRow(const float* w, const float* x, int n) {
  int i = 0;
  float sum = 0.0f;
#ifdef KRUL_MATMUL_AVX2
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
  }
  for (; i + 8 <= n; i += 8)
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
  sum = HorizontalSum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
  for (; i < n; ++i) sum += w[i] * x[i];
  return sum;
}

// Rows [row_begin, row_end) of w against tokens [t_begin, t_end) of x.
template <int R>
void RowGroupTokens(const float* x, int t_begin, int t_end, int in, const float* w, int row,
                    int out, float* y) {
  const float* wr = w + static_cast<size_t>(row) * in;
  int t = t_begin;
  for (; t + kTokenGroup <= t_end; t += kTokenGroup) {
    MicroKernel<R, kTokenGroup>(x + static_cast<size_t>(t) * in, wr, in,
                                y + static_cast<size_t>(t) * out + row, out);
  }
  for (; t < t_end; ++t) {
    MicroKernel<R, 1>(x + static_cast<size_t>(t) * in, wr, in,
                      y + static_cast<size_t>(t) * out + row, out);
  }
}

void MatMulRows(const float* x, int n, int in, const float* w, int out, float* y, int row_begin,
                int row_end) {
  if (n == 1) {
    for (int r = row_begin; r < row_end; ++r) y[r] = DotRow(w + static_cast<size_t>(r) * in, x, in);
    return;
  }
  for (int t0 = 0; t0 < n; t0 += kTokenTile) {
    const int t1 = std::min(n, t0 + kTokenTile);
    int r = row_begin;
    for (; r + kRowGroup <= row_end; r += kRowGroup) {
      RowGroupTokens<kRowGroup>(x, t0, t1, in, w, r, out, y);
    }
    for (; r < row_end; ++r) RowGroupTokens<1>(x, t0, t1, in, w, r, out, y);
  }
}

}  // namespace

void MatMul(ThreadPool& pool, const float* x, int n, int in, const float* w, int out, float* y) {
  const int64_t tasks = (out + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t macs_per_task = static_cast<int64_t>(n) * in * kRowsPerTask;
  const int64_t min_tasks =
      std::max<int64_t>(1, kMinMacsPerTask / std::max<int64_t>(1, macs_per_task));
  pool.ParallelFor(
      tasks,
      [&](int64_t begin, int64_t end) {
        const int row_begin = static_cast<int>(begin) * kRowsPerTask;
        const int row_end = std::min(out, static_cast<int>(end) * kRowsPerTask);
        MatMulRows(x, n, in, w, out, y, row_begin, row_end);
      },
      min_tasks);
}

void NaiveMatMul(ThreadPool& pool, const float* x, int n, int in, const float* w, int out,
                 float* y) {
  for (int t = 0; t < n; ++t) {
    const float* xt = x + static_cast<size_t>(t) * in;
    float* yt = y + static_cast<size_t>(t) * out;
    pool.ParallelFor(out, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const float* wr = w + static_cast<size_t>(r) * in;
        float val = 0.0f;
        for (int i = 0; i < in; ++i) val += wr[i] * xt[i];
        yt[r] = val;
      }
    });
  }
}

}  // namespace krul::internal
