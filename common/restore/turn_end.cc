#include "krul/restore/turn_end.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "krul/base/status_macros.h"
#include "krul/compress/merge_error.h"

namespace krul {

absl::Status TurnEndOptions::Validate() const {
  KRUL_RETURN_IF_ERROR(shape.Validate());
  KRUL_RETURN_IF_ERROR(selector.Validate());
  if (calibration != nullptr && calibration->n_layers() != shape.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("the pair calibration is for ",
                                                   calibration->n_layers(),
                                                   " layers; the model has ", shape.n_layers));
  }
  if (selector.quality_budget > 0 && calibration == nullptr) {
    return absl::InvalidArgumentError(
        "a quality budget needs a pair calibration (predicted costs to spend it on)");
  }
  if (neighbours < 1) return absl::InvalidArgumentError("neighbours must be >= 1");
  if (!(prior_rows >= 0)) return absl::InvalidArgumentError("prior_rows must be >= 0");
  if (chunk_tokens < 0) return absl::InvalidArgumentError("chunk_tokens must be >= 0");
  if (!(retain_angle_degrees >= 0 && retain_angle_degrees <= 180)) {
    return absl::InvalidArgumentError("retain_angle_degrees is outside [0, 180]");
  }
  if (expected_new_tokens < 0 || granularity_tokens < 1) {
    return absl::InvalidArgumentError("bad restore planning parameters");
  }
  return absl::OkStatus();
}

namespace {

// fixed_unless_confident's test: true unless `fixed` is a usable
// alternative (same pair count, no protected layer, different pairs) that
// the references named in `neighbours` do not confidently rank above
// `own`: mean(cost(fixed) - cost(own)) > its standard error.
bool KrulPairsConfidentlyCheaper(const PairCalibration& calibration,
                                 const std::vector<std::string>& neighbours,
                                 const CompressionPlan& fixed, const CompressionPlan& own,
                                 const std::vector<uint8_t>& protect) {
  const int L = calibration.n_layers();
  if (fixed.n_layers != L || fixed.pairs.size() != own.pairs.size() || fixed.pairs.empty()) {
    return true;
  }
  for (const LayerPair& p : fixed.pairs) {
    if (!protect.empty() && (protect[p.first] || protect[p.second])) return true;
  }
  std::vector<double> d;
  for (const std::string& id : neighbours) {
    for (const PairReference& r : calibration.references()) {
      if (r.id != id) continue;
      double diff = 0;
      for (const LayerPair& p : fixed.pairs)
        diff += r.cost[static_cast<size_t>(p.first) * L + p.second];
      for (const LayerPair& p : own.pairs)
        diff -= r.cost[static_cast<size_t>(p.first) * L + p.second];
      d.push_back(diff);
      break;
    }
  }
  const double n = static_cast<double>(d.size());
  if (n < 2) return false;
  double mean = 0, var = 0;
  for (double x : d) mean += x / n;
  for (double x : d) var += (x - mean) * (x - mean) / (n - 1);
  return mean > std::sqrt(var / n);
}

}  // namespace

absl::StatusOr<PairChoice> ChooseTurnEndPairs(const TurnEndOptions& options,
                                              const TurnEndInput& input) {
  KRUL_RETURN_IF_ERROR(options.Validate());
  const int L = options.shape.n_layers;
  PairChoice choice;
  choice.pairs = CompressionPlan::Uncompressed(L);
  switch (RestoreModePairSource(input.mode)) {
    case PairSource::kNone:
      choice.source = "none";
      return choice;
    case PairSource::kStaticMidDepth: {
      KRUL_ASSIGN_OR_RETURN(choice.pairs, StaticMidDepthPlan(L, options.selector.target_ratio));
      choice.source = "static";
      return choice;
    }
    case PairSource::kCalibration:
      if (options.fixed_pairs.n_layers == L) choice.pairs = options.fixed_pairs;
      choice.source = "fixed";
      return choice;
    case PairSource::kPerConversation:
      break;
  }
  // Protected layers: by the conversation's own edge masses.
  std::vector<uint8_t> protect;
  if (input.estimate != nullptr && input.estimate->n_layers == L) {
    protect = SensitiveLayers(*input.estimate, options.selector.sensitivity_threshold);
  }
  for (uint8_t p : protect) choice.protected_layers += p;

  if (options.calibration != nullptr && !options.calibration->references().empty()) {
    if (input.cache == nullptr || input.num_tokens < 1) {
      return absl::InvalidArgumentError("predicting pair costs needs the conversation's cache");
    }
    const int begin =
        input.exact_from > 0 && input.num_tokens - input.exact_from >= kMinProfileTokens
            ? input.exact_from
            : 0;
    KRUL_ASSIGN_OR_RETURN(const MergeErrors merge,
                          MeasureMergeErrors(*input.cache, options.shape, begin, input.num_tokens));
    auto predicted =
        options.calibration->Predict(merge, options.neighbours, options.exclude_reference);
    if (predicted.ok()) {
      KRUL_ASSIGN_OR_RETURN(
          choice.pairs,
          SelectPlanByScore(predicted->cost, protect, options.selector,
                            input.estimate != nullptr ? input.estimate->edge_fraction : 0.1));
      choice.source = "calibration";
      if (options.fixed_unless_confident && options.selector.quality_budget <= 0 &&
          !KrulPairsConfidentlyCheaper(*options.calibration, predicted->neighbours,
                                       options.fixed_pairs, choice.pairs, protect)) {
        choice.pairs = options.fixed_pairs;
        for (LayerPair& p : choice.pairs.pairs) {
          p.distance = predicted->cost[static_cast<size_t>(p.first) * L + p.second];
        }
        choice.source = "calibration-fixed";
      }
      for (const LayerPair& p : choice.pairs.pairs) choice.predicted_loss += p.distance;
      choice.neighbours = std::move(predicted->neighbours);
      choice.neighbour_domains = std::move(predicted->domains);
      return choice;
    }
    if (predicted.status().code() != absl::StatusCode::kFailedPrecondition) {
      return predicted.status();
    }
    // No reference left (a one-conversation leave-one-out): attention.
  }
  if (input.estimate == nullptr || input.estimate->rows_represented <= 0) {
    choice.source = "uncompressed";  // nothing observed: no basis for sharing
    return choice;
  }
  SimilarityEstimate scored = *input.estimate;
  if (options.prior.has_value() && options.prior_rows > 0) {
    KRUL_ASSIGN_OR_RETURN(scored,
                          ShrinkToward(*input.estimate, *options.prior, options.prior_rows));
  }
  std::vector<double> distances(static_cast<size_t>(L) * L, 0.0);
  for (int a = 0; a < L; ++a) {
    for (int b = 0; b < L; ++b)
      distances[static_cast<size_t>(a) * L + b] = scored.MeanDistance(a, b);
  }
  // Protection is the conversation's own, as above (the prior does not
  // move its edge masses).
  SelectorOptions selector = options.selector;
  selector.quality_budget = 0;  // distances are not losses
  KRUL_ASSIGN_OR_RETURN(choice.pairs,
                        SelectPlanByScore(distances, protect, selector, scored.edge_fraction));
  choice.pairs.quality_budget = 0;
  choice.source = "attention";
  return choice;
}

absl::StatusOr<TurnEnd> PlanTurnEnd(const TurnEndOptions& options, const TurnEndInput& input,
                                    const CostCoefficients& costs) {
  if (input.cache == nullptr || input.num_tokens < 1) {
    return absl::InvalidArgumentError("a turn end needs the conversation's cache");
  }
  TurnEnd out;
  KRUL_ASSIGN_OR_RETURN(out.choice, ChooseTurnEndPairs(options, input));
  const int L = options.shape.n_layers;
  out.storage = StoragePlanForMode(input.mode, out.choice.pairs, L);
  if (options.load_all) {
    RestoreProblem problem;
    problem.n_layers = L;
    problem.history_tokens = input.num_tokens;
    problem.new_tokens = options.expected_new_tokens;
    problem.layout = LayoutForPlan(options.shape, out.storage, options.dtype);
    problem.policy = input.mode == RestoreMode::kRecompute ? RestoreModeSplitPolicy(input.mode)
                                                           : SplitPolicy::kLoadAll;
    problem.granularity_tokens = options.granularity_tokens;
    KRUL_ASSIGN_OR_RETURN(out.restore, PlanRestore(problem, costs));
  } else {
    ModePlanOptions plan_options;
    plan_options.dtype = options.dtype;
    plan_options.granularity_tokens = options.granularity_tokens;
    KRUL_ASSIGN_OR_RETURN(out.restore,
                          PlanForMode(input.mode, out.choice.pairs, options.shape, input.num_tokens,
                                      options.expected_new_tokens, costs, plan_options));
  }
  CompressorOptions compressor;
  compressor.dtype = options.dtype;
  compressor.chunk_tokens = options.chunk_tokens;
  compressor.retain_angle_degrees = options.retain_angle_degrees;
  compressor.pool = options.pool;
  KRUL_ASSIGN_OR_RETURN(out.kv,
                        CompressKv(*input.cache, options.shape, out.storage, input.num_tokens,
                                   out.restore.recompute_tokens, compressor));
  return out;
}

}  // namespace krul
