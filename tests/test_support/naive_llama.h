// A deliberately simple double-precision Llama forward pass, one token at a
// time, written from the architecture's definition (not from the engine), to
// check the engine against. Slow; for tiny models only.
#ifndef KRUL_TESTS_TEST_SUPPORT_NAIVE_LLAMA_H_
#define KRUL_TESTS_TEST_SUPPORT_NAIVE_LLAMA_H_

#include <vector>

#include "krul/model/model.h"

namespace krul::testing {

class NaiveLlama {
 public:
  explicit NaiveLlama(const Model& model);

  // Logits (vocab) of `token` at position `pos`; positions must be fed in
  // order 0, 1, 2, ...
  std::vector<double> Forward(int token, int pos);

  // Attention probabilities of the last Forward, per layer and query head
  // over keys [0, pos].
  const std::vector<std::vector<std::vector<double>>>& last_attention() const {
    return last_attention_;
  }

  // Key of `layer` at `pos` after RoPE (kv_dim doubles).
  const std::vector<double>& key(int layer, int pos) const { return keys_[layer][pos]; }

 private:
  const Model& model_;
  std::vector<std::vector<std::vector<double>>> keys_;            // [layer][pos][kv_dim]
  std::vector<std::vector<std::vector<double>>> values_;          // [layer][pos][kv_dim]
  std::vector<std::vector<std::vector<double>>> last_attention_;  // [layer][head][key]
};

}  // namespace krul::testing

#endif  // KRUL_TESTS_TEST_SUPPORT_NAIVE_LLAMA_H_
