// Picks the next token from logits: greedy (argmax, first index on ties) at
// temperature 0, otherwise softmax at the temperature, optionally restricted
// to the smallest set of tokens whose probability reaches top_p (nucleus).
// A fixed seed gives the same choices on every machine.
//
// Not thread-safe (holds the random state).
#ifndef KRUL_ENGINE_SAMPLER_H_
#define KRUL_ENGINE_SAMPLER_H_

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace krul {

// Index of the largest value; the first one on ties. -1 for an empty span.
int ArgMax(std::span<const float> values);

struct SamplerOptions {
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 0.9f;        // in (0, 1]; 1 disables nucleus filtering
  uint64_t seed = 42;
};

class Sampler {
 public:
  // INVALID_ARGUMENT for a negative or non-finite temperature or top_p
  // outside (0, 1].
  static absl::StatusOr<Sampler> Create(const SamplerOptions& options);

  // Returns the chosen token id. `logits` is overwritten (probabilities).
  int Sample(std::span<float> logits);

 private:
  explicit Sampler(const SamplerOptions& options) : options_(options), rng_(options.seed) {}
  SamplerOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int>> candidates_;
};

}  // namespace krul

#endif  // KRUL_ENGINE_SAMPLER_H_
