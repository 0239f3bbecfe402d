// krul-fixed's layer pairs: chosen once, at start-up, from the similarity
// averaged over a calibration set of conversations (the same pairs then
// serve every conversation, unlike krul's per-conversation choice).
#ifndef KRUL_SERVICES_WORKER_CALIBRATION_H_
#define KRUL_SERVICES_WORKER_CALIBRATION_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "chat_template.h"
#include "krul/compression_plan.h"
#include "krul/engine.h"
#include "krul/selector.h"

namespace krul::worker {

// A few short story prompts in the TinyStories style, the default set.
const std::vector<std::string>& DefaultCalibrationPrompts();

// For each prompt (a one-message conversation), prefills it and decodes
// `decode_tokens` greedy tokens with a SimilarityEstimator observing; the
// estimates are merged and handed to SelectPlan. The engine's observer is
// cleared afterwards. INVALID_ARGUMENT for no prompts; errors of the engine,
// estimator and selector (FAILED_PRECONDITION when nothing was observed).
absl::StatusOr<CompressionPlan> CalibratePairs(Engine& engine, const ChatTemplate& chat_template,
                                               const std::vector<std::string>& prompts,
                                               int decode_tokens, const SelectorOptions& selector);

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_CALIBRATION_H_
