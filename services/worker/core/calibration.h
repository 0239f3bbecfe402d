// krul-fixed's layer pairs: chosen once, at start-up, from the similarity
// averaged over a calibration set of conversations (the same pairs then
// serve every conversation, unlike krul's per-conversation choice).
#ifndef KRUL_SERVICES_WORKER_CORE_CALIBRATION_H_
#define KRUL_SERVICES_WORKER_CORE_CALIBRATION_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/selector.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/backend.h"
#include "worker/core/chat_template.h"

namespace krul::worker {

// A few short story prompts in the TinyStories style, the default set.
const std::vector<std::string>& DefaultCalibrationPrompts();

// For each prompt (a one-message conversation), prefills it and decodes
// `decode_tokens` greedy tokens on `backend` with the backend's similarity
// estimator observing (backend_estimator.h), and returns the merged estimate
// (krul-fixed's pairs are SelectPlan of it; krul may shrink each
// conversation's estimate toward it). The backend's observer is cleared
// afterwards. INVALID_ARGUMENT for no prompts or none that fits the model;
// errors of the backend and estimator.
absl::StatusOr<SimilarityEstimate> CalibrationEstimate(ComputeBackend& backend,
                                                       const ChatTemplate& chat_template,
                                                       const std::vector<std::string>& prompts,
                                                       int decode_tokens);

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_CORE_CALIBRATION_H_
