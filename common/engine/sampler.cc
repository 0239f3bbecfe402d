#include "krul/engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace krul {

int ArgMax(std::span<const float> values) {
  if (values.empty()) return -1;
  int best = 0;
  for (size_t i = 1; i < values.size(); ++i) {
    if (values[i] > values[best]) best = static_cast<int>(i);
  }
  return best;
}

absl::StatusOr<Sampler> Sampler::Create(const SamplerOptions& options) {
  if (!std::isfinite(options.temperature) || options.temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature=", options.temperature, " must be finite and >= 0"));
  }
  if (!(options.top_p > 0.0f && options.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p=", options.top_p, " must be in (0, 1]"));
  }
  return Sampler(options);
}

int Sampler::Sample(std::span<float> logits) {
  if (logits.empty()) return -1;
  if (options_.temperature == 0.0f || logits.size() == 1) return ArgMax(logits);
  // Softmax at the temperature, shifted by the max for stability.
  float max_logit = logits[ArgMax(logits)];
  double sum = 0;
  for (float& x : logits) {
    x = std::exp((x - max_logit) / options_.temperature);
    sum += x;
  }
  for (float& x : logits) x = static_cast<float>(x / sum);

  // A uniform draw in [0, 1) from 53 random bits, identical on every platform
  // (std::uniform_real_distribution is not).
  const double coin = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
  if (options_.top_p >= 1.0f) {
    double cdf = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
      cdf += logits[i];
      if (coin < cdf) return static_cast<int>(i);
    }
    return static_cast<int>(logits.size()) - 1;  // rounding
  }
  // Nucleus: tokens below (1 - top_p) / (n - 1) can never be in the nucleus,
  // so drop them before sorting (as llama2.c does).
  const float cutoff = (1.0f - options_.top_p) / static_cast<float>(logits.size() - 1);
  candidates_.clear();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (logits[i] >= cutoff) candidates_.emplace_back(logits[i], static_cast<int>(i));
  }
  if (candidates_.empty()) return ArgMax(logits);  // top_p below 1/n: nothing survives
  std::sort(candidates_.begin(), candidates_.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  double mass = 0;
  size_t last = candidates_.size() - 1;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    mass += candidates_[i].first;
    if (mass > options_.top_p) {
      last = i;
      break;
    }
  }
  const double target = coin * mass;
  double cdf = 0;
  for (size_t i = 0; i <= last; ++i) {
    cdf += candidates_[i].first;
    if (target < cdf) return candidates_[i].second;
  }
  return candidates_[last].second;
}

}  // namespace krul
