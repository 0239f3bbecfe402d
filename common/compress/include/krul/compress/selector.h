// The preemptive selector: at turn end, turns a SimilarityEstimate into the
// conversation's CompressionPlan.
//
//  1. A layer whose attention mass on the first + last edge_fraction of the
//     context (SimilarityEstimate::EdgeMass) exceeds
//     `sensitivity_threshold` is input-sensitive: its attention follows the
//     newest input, so sharing it would hurt later turns. Never shared.
//     Layers listed in `never_share` are treated the same way.
//  2. Among the other (input-robust) layers, pairs (a, b) of any two layers
//     are taken greedily by increasing MeanDistance (ties broken by the
//     smaller (a, b)), skipping pairs with an already used layer, until
//     n_layers / (n_layers - pairs) >= target_ratio or no pair is left.
//  3. Quality budget: with quality_budget > 0 the ratio is chosen per
//     conversation: pairs are taken while the SUM of their scores stays
//     within the budget (target_ratio then only caps the number of pairs):
//     the largest sharing whose predicted loss fits. With scores that are
//     predicted losses (SelectPlanByScore with PairCalibration::Predict's
//     costs), the budget is a loss: mean KL per next token, ~ the relative
//     perplexity increase (0.01 ~ 1%).
//
// SelectPlan scores pairs by MeanDistance and protects layers by their edge
// mass; SelectPlanByScore takes any per-pair score and the protected layers
// from the caller, with the same greedy rule.
//
// Deterministic: the same estimate and options give the same plan.
// Thread-safe (pure function).
#ifndef KRUL_COMPRESS_SELECTOR_H_
#define KRUL_COMPRESS_SELECTOR_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/similarity_estimator.h"

namespace krul {

struct SelectorOptions {
  // Wanted n_layers / stored layers, in [1, 2]. 1 = no sharing. Default 1.5.
  double target_ratio = 1.5;
  // Edge mass (first + last part of the context) above which a layer is
  // input-sensitive, in [0, 1]; 1 = no layer is. Default 0.6. The right value
  // depends on the model: on a TinyStories text (103 prompt + 64 decoded
  // tokens) krul12L's layers measure 0.24-0.60 (the last layer highest),
  // stories260K's 0.53-0.80 (every layer attends mostly to recent tokens).
  double sensitivity_threshold = 0.6;
  // > 0: the most the selected pairs' scores may sum to (step 3); 0 = the
  // fixed ratio. Default 0.
  double quality_budget = 0;
  // Layers never shared whatever their statistics (e.g. layer 0).
  std::vector<int> never_share;

  // INVALID_ARGUMENT naming the field when out of range.
  absl::Status Validate() const;
};

// INVALID_ARGUMENT when the options do not validate, the estimate is
// malformed (sizes, non-finite or negative values) or a never_share layer is
// out of range; FAILED_PRECONDITION when the estimate observed no rows (no
// basis for a choice: compress with CompressionPlan::Uncompressed instead).
absl::StatusOr<CompressionPlan> SelectPlan(const SimilarityEstimate& estimate,
                                           const SelectorOptions& options);

// Steps 2 and 3 on `scores` ((L, L) row-major; lower = cheaper to share;
// the mean of (a, b) and (b, a) is used), with the layers marked in
// `protect` (L entries, 1 = never shared; empty = none) and
// options.never_share kept out; options.sensitivity_threshold is only
// recorded in the plan. INVALID_ARGUMENT for bad options, sizes that do not
// match an L in [1, 4096], or a negative / non-finite score.
absl::StatusOr<CompressionPlan> SelectPlanByScore(std::span<const double> scores,
                                                  std::span<const uint8_t> protect,
                                                  const SelectorOptions& options,
                                                  double edge_fraction = 0.1);

// The layers SelectPlan protects for `estimate`: EdgeMass(l) > threshold.
std::vector<uint8_t> SensitiveLayers(const SimilarityEstimate& estimate, double threshold);

// `own` (one conversation's estimate) shrunk toward `population` (e.g. the
// merged estimate of a calibration set, as krul-fixed uses): the population
// is rescaled to weigh as `population_rows` attention rows and added to
// `own`. A conversation that has shown few rows (a short first turn) then
// keeps the population's pairs unless its own distances differ clearly, and
// one with many rows follows its own: the empirical-Bayes answer to a noisy
// per-conversation estimate. 0 returns `own` unchanged; a population that
// observed nothing adds nothing. Only the statistics the selector reads
// (distances, edge masses, rows) are combined; token counts and timings stay
// `own`'s. INVALID_ARGUMENT when the estimates' layer counts or edge
// fractions differ, either is malformed, or population_rows is negative or
// not finite.
absl::StatusOr<SimilarityEstimate> ShrinkToward(const SimilarityEstimate& own,
                                                const SimilarityEstimate& population,
                                                double population_rows);

// Number of pairs needed to reach `target_ratio` with n_layers layers:
// the smallest p with n_layers / (n_layers - p) >= target_ratio (capped at
// n_layers / 2).
int PairsForRatio(int n_layers, double target_ratio);

}  // namespace krul

#endif  // KRUL_COMPRESS_SELECTOR_H_
