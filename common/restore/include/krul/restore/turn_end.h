// What a conversation's KV becomes at a turn end, decided in ONE place for
// the worker's persister and the quality benchmarks (krul-bench-quality,
// krul-bench-pair-oracle), so the rule that is measured is the rule that is
// served:
//
//  1. The layer pairs that share KV, by the mode's pair source
//     (restore_mode.h):
//       minicache   static adjacent pairs from mid-depth at target_ratio;
//       krul-fixed  the fixed pairs given (chosen once from a calibration);
//       krul        this conversation's own pairs, scored per pair by
//         - with a pair calibration (pair_calibration.h): the predicted
//           cost of sharing it, the mean measured cost of the references
//           nearest to the conversation's merge-error profile
//           (merge_error.h, measured here on its cache);
//         - otherwise: the conversation's attention distances (its carried
//           estimate), shrunk toward the prior estimate by prior_rows.
//       Layers whose edge attention mass exceeds the sensitivity threshold
//       are protected (never shared). The ratio is target_ratio, or, with
//       a quality budget, the largest whose predicted loss fits
//       (selector.h; a budget needs the calibration's predicted costs).
//  2. The restore split: the mode's split policy under `costs`
//     (PlanForMode), or every layer's whole history stored (load_all: the
//     benches' equal-bytes comparison).
//  3. The KV compressed with the pairs (dtype, chunking, retention of
//     wide-angle units).
//
// Thread-safe (pure functions of their arguments; the cache is only read).
#ifndef KRUL_RESTORE_TURN_END_H_
#define KRUL_RESTORE_TURN_END_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "krul/base/dtype.h"
#include "krul/base/thread_pool.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/compress/pair_calibration.h"
#include "krul/compress/selector.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/engine/kv_cache.h"
#include "krul/restore/cost_model.h"
#include "krul/restore/restore_mode.h"
#include "krul/restore/restore_plan.h"

namespace krul {

struct TurnEndOptions {
  KvShape shape;
  // target_ratio (the fixed ratio, or the cap under a budget),
  // sensitivity_threshold, quality_budget (> 0 needs `calibration`).
  SelectorOptions selector;
  // krul with measured costs: the references (not owned; nullptr = none)
  // and how many nearest ones are averaged.
  const PairCalibration* calibration = nullptr;
  int neighbours = 5;
  // A reference never used (the conversation itself, for leave-one-out
  // evaluation); empty = none.
  std::string exclude_reference;
  // krul without measured costs: the prior its attention is shrunk toward
  // (none or 0 rows: its own estimate only).
  std::optional<SimilarityEstimate> prior;
  double prior_rows = 0;
  // krul-fixed's pairs.
  CompressionPlan fixed_pairs;
  // krul with a calibration at a fixed ratio: keep fixed_pairs (same pair
  // count) unless the nearest references agree that krul's own pairs are
  // cheaper, i.e. the mean over those references of (cost of fixed_pairs -
  // cost of krul's pairs) exceeds its standard error (a paired test, no
  // fitted parameter). Off: krul's pairs whenever predicted cheaper.
  bool fixed_unless_confident = false;
  // Storage.
  DType dtype = DType::kF32;
  int chunk_tokens = 256;
  double retain_angle_degrees = 180;  // see CompressorOptions
  ThreadPool* pool = nullptr;         // compressor's; not owned
  // Restore split.
  bool load_all = false;
  int expected_new_tokens = 64;
  int granularity_tokens = 16;

  // INVALID_ARGUMENT naming the problem (a budget without a calibration,
  // a calibration of another layer count, bad selector options, ...).
  absl::Status Validate() const;
};

// One conversation at its turn end.
struct TurnEndInput {
  RestoreMode mode = RestoreMode::kKrul;
  // Holds [0, num_tokens) of every layer; needed by PlanTurnEnd and by
  // krul with a pair calibration.
  const KvCache* cache = nullptr;
  int num_tokens = 0;
  // Its similarity estimate so far (every turn, estimate_codec.h's carry);
  // nullptr = none observed.
  const SimilarityEstimate* estimate = nullptr;
  // The first token the cache holds exactly as computed: after a restore,
  // tokens [0, exact_from) came from stored KV whose shared pairs are
  // merged (their merge errors there are ~0), so krul's merge-error profile
  // is measured on [exact_from, num_tokens), like the calibration's
  // references (measured on uncompressed caches), when that range holds at
  // least kMinProfileTokens; else on the whole history. 0 = all exact (the
  // whole history is profiled; what the worker's persister does today).
  // Measured with krul-bench-quality --profile_exact_tokens: the references
  // found are of the conversation's own domain more often at later turn
  // ends, the agreement about the same (docs/benchmarks.md, issue 13).
  int exact_from = 0;
};

// Fewest exact tokens a merge-error profile is measured on (see exact_from).
inline constexpr int kMinProfileTokens = 16;

// The pairs chosen and why.
struct PairChoice {
  CompressionPlan pairs;  // what the mode shares (uncompressed: nothing)
  // "none", "static", "fixed", "calibration" (predicted costs),
  // "calibration-fixed" (fixed_unless_confident kept the fixed pairs) or
  // "attention"; "uncompressed" when krul had nothing to go on.
  std::string source;
  int protected_layers = 0;
  // Sum of the chosen pairs' predicted costs ("calibration" only, else 0).
  double predicted_loss = 0;
  // The references the costs were predicted from ("calibration" only).
  std::vector<std::string> neighbours;
  std::vector<std::string> neighbour_domains;
};

// Step 1. INVALID_ARGUMENT for options that do not validate or (krul with
// a calibration) an input without a cache; errors of the merge-error measurement and selector.
absl::StatusOr<PairChoice> ChooseTurnEndPairs(const TurnEndOptions& options,
                                              const TurnEndInput& input);

struct TurnEnd {
  PairChoice choice;
  CompressionPlan storage;  // the plan stored (StoragePlanForMode)
  RestorePlan restore;      // the split the next turn will use
  CompressedKv kv;
};

// Steps 1-3. Errors of ChooseTurnEndPairs, the planner and the compressor.
absl::StatusOr<TurnEnd> PlanTurnEnd(const TurnEndOptions& options, const TurnEndInput& input,
                                    const CostCoefficients& costs);

}  // namespace krul

#endif  // KRUL_RESTORE_TURN_END_H_
