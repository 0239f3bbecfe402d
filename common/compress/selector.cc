#include "krul/compress/selector.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "absl/strings/str_cat.h"

namespace krul {
namespace {

absl::Status ValidateEstimate(const SimilarityEstimate& e) {
  if (e.n_layers < 1 || e.n_layers > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("estimate n_layers ", e.n_layers, " is outside [1, 4096]"));
  }
  const size_t l = e.n_layers;
  if (e.distance.size() != l * l || e.first_mass_sum.size() != l || e.last_mass_sum.size() != l ||
      e.mass_weight.size() != l) {
    return absl::InvalidArgumentError("estimate vectors do not match n_layers");
  }
  if (!std::isfinite(e.edge_fraction) || e.edge_fraction <= 0 || e.edge_fraction > 0.5) {
    return absl::InvalidArgumentError("estimate edge_fraction is outside (0, 0.5]");
  }
  auto bad = [](double v) { return !std::isfinite(v) || v < 0; };
  if (bad(e.rows_represented))
    return absl::InvalidArgumentError("estimate rows_represented is bad");
  for (double v : e.distance) {
    if (bad(v)) return absl::InvalidArgumentError("estimate has a negative or non-finite distance");
  }
  for (size_t i = 0; i < l; ++i) {
    if (bad(e.first_mass_sum[i]) || bad(e.last_mass_sum[i]) || bad(e.mass_weight[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("estimate has a negative or non-finite mass for layer ", i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SelectorOptions::Validate() const {
  if (!std::isfinite(target_ratio) || target_ratio < 1.0 || target_ratio > 2.0) {
    return absl::InvalidArgumentError(
        absl::StrCat("target_ratio ", target_ratio, " is outside [1, 2]"));
  }
  if (!std::isfinite(sensitivity_threshold) || sensitivity_threshold < 0 ||
      sensitivity_threshold > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sensitivity_threshold ", sensitivity_threshold, " is outside [0, 1]"));
  }
  if (!std::isfinite(quality_budget) || quality_budget < 0) {
    return absl::InvalidArgumentError("quality_budget must be finite and >= 0");
  }
  return absl::OkStatus();
}

int PairsForRatio(int n_layers, double target_ratio) {
  if (n_layers < 2 || !(target_ratio > 1.0)) return 0;
  const int max_pairs = n_layers / 2;
  for (int p = 1; p <= max_pairs; ++p) {
    // n / (n - p) >= target, compared without division. A tiny slack keeps
    // a ratio given as a rounded decimal (e.g. 1.33 for 4/3) from asking for
    // one pair more than meant.
    if (static_cast<double>(n_layers) >= target_ratio * (n_layers - p) - 1e-9) return p;
  }
  return max_pairs;
}

std::vector<uint8_t> SensitiveLayers(const SimilarityEstimate& estimate, double threshold) {
  std::vector<uint8_t> out(estimate.n_layers > 0 ? estimate.n_layers : 0, 0);
  if (estimate.mass_weight.size() != out.size()) return out;
  for (int l = 0; l < estimate.n_layers; ++l) out[l] = estimate.EdgeMass(l) > threshold;
  return out;
}

absl::StatusOr<CompressionPlan> SelectPlan(const SimilarityEstimate& estimate,
                                           const SelectorOptions& options) {
  if (auto s = options.Validate(); !s.ok()) return s;
  if (auto s = ValidateEstimate(estimate); !s.ok()) return s;
  if (estimate.rows_represented <= 0) {
    return absl::FailedPreconditionError("the similarity estimate observed no attention rows");
  }
  const int n = estimate.n_layers;
  std::vector<double> scores(static_cast<size_t>(n) * n, 0.0);
  for (int a = 0; a < n; ++a) {
    for (int b = 0; b < n; ++b)
      scores[static_cast<size_t>(a) * n + b] = estimate.MeanDistance(a, b);
  }
  return SelectPlanByScore(scores, SensitiveLayers(estimate, options.sensitivity_threshold),
                           options, estimate.edge_fraction);
}

absl::StatusOr<CompressionPlan> SelectPlanByScore(std::span<const double> scores,
                                                  std::span<const uint8_t> protect,
                                                  const SelectorOptions& options,
                                                  double edge_fraction) {
  if (auto s = options.Validate(); !s.ok()) return s;
  int n = 0;
  while (static_cast<size_t>(n) * n < scores.size()) ++n;
  if (n < 1 || n > 4096 || static_cast<size_t>(n) * n != scores.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(scores.size(), " scores are not an L x L matrix"));
  }
  if (!protect.empty() && protect.size() != static_cast<size_t>(n)) {
    return absl::InvalidArgumentError(
        absl::StrCat(protect.size(), " protection flags for ", n, " layers"));
  }
  for (double v : scores) {
    if (!std::isfinite(v) || v < 0) {
      return absl::InvalidArgumentError("a pair score is negative or not finite");
    }
  }
  if (!std::isfinite(edge_fraction) || edge_fraction <= 0 || edge_fraction > 0.5) {
    return absl::InvalidArgumentError("edge_fraction is outside (0, 0.5]");
  }
  CompressionPlan plan = CompressionPlan::Uncompressed(n);
  plan.target_ratio = options.target_ratio;
  plan.sensitivity_threshold = options.sensitivity_threshold;
  plan.edge_fraction = edge_fraction;
  plan.quality_budget = options.quality_budget;
  for (int l : options.never_share) {
    if (l < 0 || l >= n) {
      return absl::InvalidArgumentError(
          absl::StrCat("never_share layer ", l, " is outside [0, ", n, ")"));
    }
    plan.input_sensitive[l] = 1;
  }
  for (size_t l = 0; l < protect.size(); ++l) {
    if (protect[l]) plan.input_sensitive[l] = 1;
  }

  // Candidate pairs of unprotected layers, cheapest first; the index order
  // breaks ties so the plan never depends on sort stability.
  std::vector<std::tuple<double, int, int>> candidates;
  for (int a = 0; a < n; ++a) {
    if (plan.input_sensitive[a]) continue;
    for (int b = a + 1; b < n; ++b) {
      if (plan.input_sensitive[b]) continue;
      // Averaging makes a hand-built, slightly asymmetric matrix give the
      // same plan whichever half it filled.
      const double d =
          0.5 * (scores[static_cast<size_t>(a) * n + b] + scores[static_cast<size_t>(b) * n + a]);
      candidates.emplace_back(d, a, b);
    }
  }
  std::sort(candidates.begin(), candidates.end());

  const int wanted = PairsForRatio(n, options.target_ratio);
  std::vector<uint8_t> used(n, 0);
  double spent = 0;
  for (const auto& [d, a, b] : candidates) {
    if (static_cast<int>(plan.pairs.size()) >= wanted) break;
    if (used[a] || used[b]) continue;
    // Sorted: every later pair costs at least as much.
    if (options.quality_budget > 0 && spent + d > options.quality_budget) break;
    spent += d;
    used[a] = used[b] = 1;
    plan.pairs.push_back(LayerPair{a, b, d});
  }
  return plan;
}

absl::StatusOr<SimilarityEstimate> ShrinkToward(const SimilarityEstimate& own,
                                                const SimilarityEstimate& population,
                                                double population_rows) {
  if (auto s = ValidateEstimate(own); !s.ok()) return s;
  if (auto s = ValidateEstimate(population); !s.ok()) return s;
  if (!std::isfinite(population_rows) || population_rows < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("population_rows ", population_rows, " must be finite and >= 0"));
  }
  if (own.n_layers != population.n_layers || own.edge_fraction != population.edge_fraction) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot shrink an estimate of ", own.n_layers, " layers (edge fraction ", own.edge_fraction,
        ") toward one of ", population.n_layers, " (", population.edge_fraction, ")"));
  }
  SimilarityEstimate out = own;
  if (population_rows == 0 || population.rows_represented <= 0) return out;
  // Distances are sums over rows and edge masses sums weighted by rows, so
  // scaling every sum by the same factor keeps the population's means and
  // gives it the wanted weight.
  const double f = population_rows / population.rows_represented;
  auto add = [f](std::vector<double>& to, const std::vector<double>& from) {
    if (to.size() < from.size()) to.resize(from.size(), 0.0);
    for (size_t i = 0; i < from.size(); ++i) to[i] += f * from[i];
  };
  add(out.distance, population.distance);
  add(out.prefill_distance, population.prefill_distance);
  add(out.decode_distance, population.decode_distance);
  add(out.first_mass_sum, population.first_mass_sum);
  add(out.last_mass_sum, population.last_mass_sum);
  add(out.mass_weight, population.mass_weight);
  out.rows_represented += population_rows;
  return out;
}

}  // namespace krul
