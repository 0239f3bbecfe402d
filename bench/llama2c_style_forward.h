// A forward pass written the way llama2.c's run.c is: one token at a time,
// matrix-vector products as plain dot-product loops parallelized over output
// rows with OpenMP, RoPE angles recomputed per call. The engine benchmark runs
// it side by side with the Krul engine as the baseline; this file is built
// with -Ofast -fopenmp like `make runomp`.
#ifndef KRUL_BENCH_LLAMA2C_STYLE_FORWARD_H_
#define KRUL_BENCH_LLAMA2C_STYLE_FORWARD_H_

#include <vector>

#include "krul/model.h"

namespace krul::bench {

class Llama2cStyleForward {
 public:
  Llama2cStyleForward(const Model& model, int num_threads);

  // Logits (vocab) of `token` at `pos`; positions are fed in order.
  const float* Forward(int token, int pos);

 private:
  const Model& model_;
  std::vector<float> x_, xb_, xb2_, hb_, hb2_, q_, att_, logits_;
  std::vector<float> key_cache_, value_cache_;  // (layer, seq_len, kv_dim)
};

}  // namespace krul::bench

#endif  // KRUL_BENCH_LLAMA2C_STYLE_FORWARD_H_
