// Element-wise and row operations of the CPU forward pass. Internal to
// krul_engine; exposed in a header so tests can check each one against a
// naive double-precision implementation.
#ifndef KRUL_COMMON_ENGINE_CPU_OPS_H_
#define KRUL_COMMON_ENGINE_CPU_OPS_H_

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace krul::internal {

// o (size) = weight * x / sqrt(mean(x^2) + eps), summed in fp32 in index
// order as llama2.c's rmsnorm(). o may alias x.
inline void RmsNorm(float* o, const float* x, const float* weight, int size, float eps) {
  float ss = 0.0f;
  for (int j = 0; j < size; ++j) ss += x[j] * x[j];
  ss /= static_cast<float>(size);
  ss += eps;
  ss = 1.0f / std::sqrt(ss);
  for (int j = 0; j < size; ++j) o[j] = weight[j] * (ss * x[j]);
}

// Rotates the adjacent pairs (2i, 2i+1), i < rotary / 2, of each of the
// `num_heads` heads of `vec` (num_heads * head_size) by the angles whose
// cosines and sines are cos_row[i], sin_row[i].
inline void ApplyRope(float* vec, int num_heads, int head_size, int rotary, const float* cos_row,
                      const float* sin_row) {
  for (int h = 0; h < num_heads; ++h) {
    float* v = vec + static_cast<size_t>(h) * head_size;
    for (int i = 0; i < rotary; i += 2) {
      const float c = cos_row[i / 2], s = sin_row[i / 2];
      const float v0 = v[i], v1 = v[i + 1];
      v[i] = v0 * c - v1 * s;
      v[i + 1] = v0 * s + v1 * c;
    }
  }
}

// In-place softmax over x[0, n), shifted by the maximum for stability.
inline void Softmax(float* x, int n) {
  float max_val = x[0];
  for (int i = 1; i < n; ++i) max_val = std::max(max_val, x[i]);
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max_val);
    sum += x[i];
  }
  for (int i = 0; i < n; ++i) x[i] /= sum;
}

// Vectorized with a reordered sum (-fopenmp-simd): attention calls this once
// per (query, key) on short head-sized rows, where a scalar loop dominates.
inline float Dot(const float* a, const float* b, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// out (n) += p * v (n).
inline void Axpy(float* out, float p, const float* v, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) out[i] += p * v[i];
}

// x (n) = silu(gate) * up, where silu(g) = g / (1 + e^-g); x may alias gate.
inline void SwiGlu(float* x, const float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    float val = gate[i];
    val *= 1.0f / (1.0f + std::exp(-val));
    x[i] = val * up[i];
  }
}

}  // namespace krul::internal

#endif  // KRUL_COMMON_ENGINE_CPU_OPS_H_
