// Dense fp32 matrix products for the CPU engine. Internal to krul_engine.
#ifndef KRUL_COMMON_ENGINE_MATMUL_H_
#define KRUL_COMMON_ENGINE_MATMUL_H_

#include "krul/base/thread_pool.h"

namespace krul::internal {

// y (n, out) = x (n, in) * w (out, in)^T: every row of x times every row of
// w, the layout of llama2.c weights. With n == 1 this is a matrix-vector
// product (decode); with n > 1 the tokens are tiled so that each weight row
// is read from memory once per tile rather than once per token (prefill).
// Rows of `y` are split across `pool`. x, w, y must not overlap.
void MatMul(ThreadPool& pool, const float* x, int n, int in, const float* w, int out, float* y);

// The same product computed one dot product at a time, as llama2.c's run.c
// does (OpenMP over output rows there, `pool` here): the baseline the
// benchmark compares against, and the reference in tests.
void NaiveMatMul(ThreadPool& pool, const float* x, int n, int in, const float* w, int out,
                 float* y);

}  // namespace krul::internal

#endif  // KRUL_COMMON_ENGINE_MATMUL_H_
