#include "worker/core/calibration.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <span>

#include "krul/compress/backend_estimator.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/sampler.h"

namespace krul::worker {

const std::vector<std::string>& DefaultCalibrationPrompts() {
  static const auto* prompts = new std::vector<std::string>{
      "Once upon a time, there was a little girl named Lily. She loved to play outside.",
      "Tom had a big red ball. One day he went to the park with his dog.",
      "The sun was shining and the birds were singing. Ben wanted to find a treasure.",
      "Tell me a story about a cat who wanted to fly.",
  };
  return *prompts;
}

absl::StatusOr<SimilarityEstimate> CalibrationEstimate(ComputeBackend& backend,
                                                       const ChatTemplate& chat_template,
                                                       const std::vector<std::string>& prompts,
                                                       int decode_tokens) {
  if (prompts.empty()) return absl::InvalidArgumentError("calibration needs at least one prompt");
  const ModelConfig& config = backend.config();
  std::optional<SimilarityEstimate> merged;
  std::vector<float> logits(config.vocab_size);
  for (const std::string& prompt : prompts) {
    std::vector<int> tokens = chat_template.PromptTokens({ChatMessage{Role::kUser, prompt}});
    const int prompt_len = std::min(static_cast<int>(tokens.size()), config.seq_len - 1);
    if (prompt_len < 1) continue;
    const int steps = std::min(decode_tokens, config.seq_len - prompt_len);
    const int capacity = prompt_len + std::max(steps, 0);
    auto cache = backend.CreateKvCache(capacity);
    if (!cache.ok()) return cache.status();
    auto estimator = CreateBackendEstimator(backend, capacity);
    if (!estimator.ok()) return estimator.status();
    absl::Status status = backend.SetAttentionObserver((*estimator)->observer());
    if (status.ok()) {
      status = backend.Forward(**cache, std::span<const int>(tokens.data(), prompt_len), 0, logits);
    }
    int pos = prompt_len;
    for (int i = 0; status.ok() && i < steps; ++i) {
      const int next = ArgMax(logits);
      status = backend.Forward(**cache, std::span<const int>(&next, 1), pos++, logits);
    }
    const absl::Status cleared = backend.SetAttentionObserver(nullptr);
    if (!status.ok()) return status;
    if (!cleared.ok()) return cleared;
    auto estimate = (*estimator)->Finish();
    if (!estimate.ok()) return estimate.status();
    if (!merged.has_value()) {
      merged = *std::move(estimate);
    } else if (auto s = merged->Merge(*estimate); !s.ok()) {
      return s;
    }
  }
  if (!merged.has_value())
    return absl::InvalidArgumentError("no calibration prompt fits the model");
  return *std::move(merged);
}

}  // namespace krul::worker
