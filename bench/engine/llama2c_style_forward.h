// A forward pass written the way llama2.c's run.c is: one token at a time,
// matrix-vector products as plain dot-product loops parallelized over output
// rows with OpenMP, RoPE angles recomputed per call. The engine benchmark runs
// it side by side with the Krul engine as the baseline; this file is built
// with -Ofast -fopenmp like `make runomp`.
#ifndef KRUL_BENCH_ENGINE_LLAMA2C_STYLE_FORWARD_H_
#define KRUL_BENCH_ENGINE_LLAMA2C_STYLE_FORWARD_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "krul/model/model.h"

namespace krul::bench {

class Llama2cStyleForward {
 public:
  // Memory-maps the llama2.c checkpoint at `path` read-only, as run.c does,
  // and reads its weights in place (page cache, ordinary pages). `model` is
  // the same checkpoint loaded by Krul and provides the config.
  static absl::StatusOr<std::unique_ptr<Llama2cStyleForward>> Open(const std::string& path,
                                                                   const Model& model,
                                                                   int num_threads);
  ~Llama2cStyleForward();

  // Logits (vocab) of `token` at `pos`; positions are fed in order.
  const float* Forward(int token, int pos);

 private:
  Llama2cStyleForward(const ModelConfig& config, int num_threads);
  ModelConfig config_;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  WeightViews weights_;  // into the mapping
  std::vector<float> x_, xb_, xb2_, hb_, hb2_, q_, att_, logits_;
  std::vector<float> key_cache_, value_cache_;  // (layer, seq_len, kv_dim)
};

}  // namespace krul::bench

#endif  // KRUL_BENCH_ENGINE_LLAMA2C_STYLE_FORWARD_H_
