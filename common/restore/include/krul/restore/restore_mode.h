// The restore modes compared by every benchmark: one switch selects how a
// returning conversation's KV comes back and how it was stored.
//
//   recompute   full prefill of the history; nothing stored
//   load        everything loaded, uncompressed (AttentionStore-like)
//   cake        compute from the start while loading from the end, one split
//               for all layers chosen to balance the two; uncompressed
//               (Cake / Pensieve-style partial recompute)
//   minicache   static adjacent pairs from mid-depth, the same for every
//               conversation, merged (MiniCache); everything loaded
//   krul-fixed  pairs chosen once from the average similarity over a
//               calibration set, merged; pyramid split
//   krul        pairs chosen per conversation from its own similarity,
//               merged; pyramid split
//
// Thread-safe (pure functions).
#ifndef KRUL_RESTORE_RESTORE_MODE_H_
#define KRUL_RESTORE_RESTORE_MODE_H_

#include <array>
#include <string_view>

#include "absl/status/statusor.h"
#include "krul/base/dtype.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/restore/cost_model.h"
#include "krul/restore/restore_plan.h"

namespace krul {

enum class RestoreMode {
  kRecompute,
  kLoad,
  kCake,
  kMiniCache,
  kKrulFixed,
  kKrul,
};

inline constexpr std::array<RestoreMode, 6> kAllRestoreModes = {
    RestoreMode::kRecompute, RestoreMode::kLoad,      RestoreMode::kCake,
    RestoreMode::kMiniCache, RestoreMode::kKrulFixed, RestoreMode::kKrul};

// "recompute", "load", "cake", "minicache", "krul-fixed", "krul".
std::string_view RestoreModeName(RestoreMode mode);

// Inverse of RestoreModeName (also accepts "krul_fixed"). INVALID_ARGUMENT
// listing the valid names for anything else.
absl::StatusOr<RestoreMode> ParseRestoreMode(std::string_view name);

// How the mode splits recompute and load.
SplitPolicy RestoreModeSplitPolicy(RestoreMode mode);

// Whether the mode stores merged layer pairs (and where they come from).
enum class PairSource { kNone, kStaticMidDepth, kCalibration, kPerConversation };
PairSource RestoreModePairSource(RestoreMode mode);

// MiniCache's static pairs, the same for every conversation: adjacent layers
// from mid-depth toward the output, (L/2, L/2+1), (L/2+2, L/2+3), ...; if
// the ratio needs more pairs than the upper half holds, continuing below
// mid-depth, (L/2-2, L/2-1), ... As many pairs as PairsForRatio(L, ratio).
// INVALID_ARGUMENT when n_layers < 1 or the ratio is outside [1, 2].
absl::StatusOr<CompressionPlan> StaticMidDepthPlan(int n_layers, double target_ratio);

// The storage layout of `plan` at `dtype`, in the compressor's accounting:
// a lone layer costs PlainBytesPerToken, a pair MergedBytesPerToken for the
// tokens both layers load and PlainBytesPerToken for the tokens only its
// second layer loads.
KvLayout LayoutForPlan(const KvShape& shape, const CompressionPlan& plan, DType dtype);

// The compression plan `mode` stores with: `pairs` for the modes that share
// layers, an uncompressed plan for the others.
CompressionPlan StoragePlanForMode(RestoreMode mode, const CompressionPlan& pairs, int n_layers);

struct ModePlanOptions {
  DType dtype = DType::kF32;    // storage type (compressor's)
  int granularity_tokens = 16;  // see RestoreProblem
  int max_grid_points = 65;
  int max_front_size = 128;
};

// The restore plan `mode` makes at turn end for `history_tokens` tokens and
// an expected new input of `expected_new_tokens`: its storage layout from
// StoragePlanForMode and its split policy. INVALID_ARGUMENT when the shape or
// the pairs do not validate; errors of PlanRestore.
absl::StatusOr<RestorePlan> PlanForMode(RestoreMode mode, const CompressionPlan& pairs,
                                        const KvShape& shape, int history_tokens,
                                        int expected_new_tokens, const CostCoefficients& costs,
                                        const ModePlanOptions& options = {});

}  // namespace krul

#endif  // KRUL_RESTORE_RESTORE_MODE_H_
