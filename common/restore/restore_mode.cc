#include "krul/restore/restore_mode.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "krul/compress/selector.h"

namespace krul {

std::string_view RestoreModeName(RestoreMode mode) {
  switch (mode) {
    case RestoreMode::kRecompute:
      return "recompute";
    case RestoreMode::kLoad:
      return "load";
    case RestoreMode::kCake:
      return "cake";
    case RestoreMode::kMiniCache:
      return "minicache";
    case RestoreMode::kKrulFixed:
      return "krul-fixed";
    case RestoreMode::kKrul:
      return "krul";
  }
  return "unknown";
}

absl::StatusOr<RestoreMode> ParseRestoreMode(std::string_view name) {
  for (RestoreMode mode : kAllRestoreModes) {
    if (name == RestoreModeName(mode)) return mode;
  }
  if (name == "krul_fixed") return RestoreMode::kKrulFixed;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown restore mode '", std::string(name),
                   "'; expected one of recompute, load, cake, minicache, krul-fixed, krul"));
}

SplitPolicy RestoreModeSplitPolicy(RestoreMode mode) {
  switch (mode) {
    case RestoreMode::kRecompute:
      return SplitPolicy::kRecomputeAll;
    case RestoreMode::kLoad:
      return SplitPolicy::kLoadAll;
    case RestoreMode::kCake:
      return SplitPolicy::kUniform;
    case RestoreMode::kMiniCache:
      return SplitPolicy::kLoadAll;
    case RestoreMode::kKrulFixed:
      return SplitPolicy::kPyramid;
    case RestoreMode::kKrul:
      return SplitPolicy::kPyramid;
  }
  return SplitPolicy::kRecomputeAll;
}

PairSource RestoreModePairSource(RestoreMode mode) {
  switch (mode) {
    case RestoreMode::kMiniCache:
      return PairSource::kStaticMidDepth;
    case RestoreMode::kKrulFixed:
      return PairSource::kCalibration;
    case RestoreMode::kKrul:
      return PairSource::kPerConversation;
    default:
      return PairSource::kNone;
  }
}

absl::StatusOr<CompressionPlan> StaticMidDepthPlan(int n_layers, double target_ratio) {
  if (n_layers < 1) return absl::InvalidArgumentError("StaticMidDepthPlan needs n_layers >= 1");
  if (!(target_ratio >= 1 && target_ratio <= 2)) {
    return absl::InvalidArgumentError("StaticMidDepthPlan target_ratio must be in [1, 2]");
  }
  CompressionPlan plan = CompressionPlan::Uncompressed(n_layers);
  plan.target_ratio = target_ratio;
  const int want = PairsForRatio(n_layers, target_ratio);
  const int mid = n_layers / 2;
  for (int a = mid; a + 1 < n_layers && static_cast<int>(plan.pairs.size()) < want; a += 2) {
    plan.pairs.push_back({a, a + 1, 0});
  }
  for (int a = mid - 2; a >= 0 && static_cast<int>(plan.pairs.size()) < want; a -= 2) {
    plan.pairs.push_back({a, a + 1, 0});
  }
  return plan;
}

KvLayout LayoutForPlan(const KvShape& shape, const CompressionPlan& plan, DType dtype) {
  std::vector<std::pair<int, int>> pairs;
  for (const LayerPair& p : plan.pairs) pairs.push_back({p.first, p.second});
  return PairedLayout(shape.n_layers, pairs, static_cast<double>(PlainBytesPerToken(shape, dtype)),
                      static_cast<double>(MergedBytesPerToken(shape, dtype)));
}

CompressionPlan StoragePlanForMode(RestoreMode mode, const CompressionPlan& pairs, int n_layers) {
  if (RestoreModePairSource(mode) == PairSource::kNone) {
    return CompressionPlan::Uncompressed(n_layers);
  }
  return pairs;
}

absl::StatusOr<RestorePlan> PlanForMode(RestoreMode mode, const CompressionPlan& pairs,
                                        const KvShape& shape, int history_tokens,
                                        int expected_new_tokens, const CostCoefficients& costs,
                                        const ModePlanOptions& options) {
  if (auto s = shape.Validate(); !s.ok()) return s;
  const CompressionPlan storage = StoragePlanForMode(mode, pairs, shape.n_layers);
  if (auto s = ValidatePlan(storage); !s.ok()) return s;
  if (storage.n_layers != shape.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("compression plan is for ", storage.n_layers,
                                                   " layers; the model has ", shape.n_layers));
  }
  RestoreProblem problem;
  problem.n_layers = shape.n_layers;
  problem.history_tokens = history_tokens;
  problem.new_tokens = expected_new_tokens;
  problem.layout = LayoutForPlan(shape, storage, options.dtype);
  problem.policy = RestoreModeSplitPolicy(mode);
  problem.granularity_tokens = options.granularity_tokens;
  problem.max_grid_points = options.max_grid_points;
  problem.max_front_size = options.max_front_size;
  return PlanRestore(problem, costs);
}

}  // namespace krul
