#include "algorithms/restore_bench_common.h"

#include <algorithm>
#include <cstdio>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "krul/base/status_macros.h"
#include "krul/compress/selector.h"
#include "krul/model/model_shape.h"

namespace krul::bench {

absl::StatusOr<std::vector<int>> ParseHistories(const std::string& text) {
  std::vector<int> histories;
  for (absl::string_view s : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int h = 0;
    if (!absl::SimpleAtoi(s, &h) || h < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--histories: bad length '", std::string(s), "'"));
    }
    histories.push_back(h);
  }
  return histories;
}

absl::StatusOr<ModelConfig> ParseShape(const std::string& text, int seq_len,
                                       const ModelConfig& defaults) {
  ModelConfig base = defaults;
  base.seq_len = seq_len;
  KRUL_ASSIGN_OR_RETURN(ModelConfig c, ParseModelShape(text, base));
  if (c.seq_len != seq_len) {
    return absl::InvalidArgumentError(absl::StrCat("--model_shape: seq_len is set by the bench (",
                                                   seq_len, " here), not by the shape"));
  }
  return c;
}

std::vector<int> Tokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int> t(n);
  for (int& v : t) v = std::uniform_int_distribution<int>(3, vocab - 1)(rng);
  if (n > 0) t[0] = 1;
  return t;
}

CompressionPlan SelectOrNone(const SimilarityEstimate& estimate, int n_layers, double ratio) {
  SelectorOptions so;
  so.target_ratio = ratio;
  auto plan = SelectPlan(estimate, so);
  if (!plan.ok()) {
    std::fprintf(stderr, "selector: %s (storing uncompressed)\n", plan.status().ToString().c_str());
    return CompressionPlan::Uncompressed(n_layers);
  }
  return *plan;
}

std::string PairsString(const CompressionPlan& plan) {
  std::vector<std::string> parts;
  for (const LayerPair& p : plan.pairs) parts.push_back(absl::StrCat(p.first, "-", p.second));
  return absl::StrJoin(parts, " ");
}

const CompressionPlan& PairsForMode(RestoreMode mode, const CompressionPlan& static_pairs,
                                    const CompressionPlan& fixed_pairs,
                                    const CompressionPlan& own_pairs) {
  return mode == RestoreMode::kMiniCache   ? static_pairs
         : mode == RestoreMode::kKrulFixed ? fixed_pairs
                                           : own_pairs;
}

ComputeProbeOptions RestoreComputeProbeOptions(int seq_len) {
  ComputeProbeOptions cpo;
  cpo.token_counts = {128, 512, std::min(2048, seq_len)};
  cpo.late_start = std::min(4096, seq_len / 2);
  cpo.late_tokens = 128;
  cpo.repeats = 3;
  return cpo;
}

std::string ModeTableHeader() {
  return absl::StrFormat("%7s %9s %9s %9s %9s %9s %9s | %6s %6s %6s %6s %6s | %7s %5s", "history",
                         "recompute", "load", "cake", "minicache", "krul-fix", "krul", "x_rec",
                         "x_load", "x_cake", "x_mini", "x_fix", "storage", "eff");
}

std::string ModeTableRow(int history, const ModeComparison& c) {
  auto ms = [&](RestoreMode m) { return c.ttft_s.at(m) * 1e3; };
  return absl::StrFormat(
      "%7d %8.1fms %8.1fms %8.1fms %8.1fms %8.1fms %8.1fms | %6.2f %6.2f %6.2f %6.2f %6.2f | "
      "%6.2fx %5.2f",
      history, ms(RestoreMode::kRecompute), ms(RestoreMode::kLoad), ms(RestoreMode::kCake),
      ms(RestoreMode::kMiniCache), ms(RestoreMode::kKrulFixed), ms(RestoreMode::kKrul),
      c.Ratio(RestoreMode::kRecompute), c.Ratio(RestoreMode::kLoad), c.Ratio(RestoreMode::kCake),
      c.Ratio(RestoreMode::kMiniCache), c.Ratio(RestoreMode::kKrulFixed), c.storage_ratio,
      c.efficiency);
}

std::string ModeRatiosJson(int history, const ModeComparison& c) {
  return absl::StrFormat(
      "    {\"history\": %d, \"ratio_vs_recompute\": %.4f, \"ratio_vs_load\": %.4f, "
      "\"ratio_vs_cake\": %.4f, \"ratio_vs_minicache\": %.4f, \"ratio_vs_krul_fixed\": %.4f, "
      "\"storage_ratio\": %.4f, \"efficiency\": %.4f",
      history, c.Ratio(RestoreMode::kRecompute), c.Ratio(RestoreMode::kLoad),
      c.Ratio(RestoreMode::kCake), c.Ratio(RestoreMode::kMiniCache),
      c.Ratio(RestoreMode::kKrulFixed), c.storage_ratio, c.efficiency);
}

std::string ProbeJson(double probe_seconds, const ComputeCoefficients& compute,
                      const LoadCoefficients& load) {
  return absl::StrFormat(
      "  \"probe\": {\"seconds\": %.4g, \"fixed_s\": %.6g, \"per_token_s\": %.6g, "
      "\"per_attention_pair_s\": %.6g, \"load_latency_s\": %.6g, "
      "\"load_bytes_per_second\": %.6g},\n",
      probe_seconds, compute.fixed_s, compute.per_token_s, compute.per_attention_pair_s,
      load.latency_s, load.bytes_per_second);
}

std::string PairsJson(const CompressionPlan& static_pairs, const CompressionPlan& fixed_pairs) {
  return absl::StrFormat("  \"pairs\": {\"minicache\": \"%s\", \"krul-fixed\": \"%s\"},\n",
                         PairsString(static_pairs), PairsString(fixed_pairs));
}

}  // namespace krul::bench
