// Pieces shared by krul-bench-restore (CPU) and krul-bench-restore-gpu: flag
// parsing, the synthetic token streams, the pairs each mode stores with, the
// start-up compute probe's points, and the printing of krul's TTFT ratios
// against every other mode (the table row and the JSON keys both programs
// report, so their outputs stay comparable). Depends on krul_restore only
// (no gRPC / UCX / CUDA), so it builds with KRUL_ENGINE_ONLY.
#ifndef KRUL_BENCH_KRUL_RESTORE_BENCH_COMMON_H_
#define KRUL_BENCH_KRUL_RESTORE_BENCH_COMMON_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "krul/base/dtype.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/similarity_estimator.h"
#include "krul/model/model.h"
#include "krul/restore/cost_model.h"
#include "krul/restore/restore_mode.h"

namespace krul::bench {

// Comma-separated history lengths ("512,1024"), empty items skipped.
// Errors: kInvalidArgument "--histories: bad length '<item>'" for an item
// that is not an integer >= 1. An empty list is returned as such.
absl::StatusOr<std::vector<int>> ParseHistories(const std::string& text);

// The bench's model: --model_shape `text` (either form of ParseModelShape,
// krul/model/model_shape.h) over `defaults`, with seq_len = `seq_len` (the
// bench sizes the context from its histories). Errors: ParseModelShape's,
// and kInvalidArgument when `text` sets another seq_len.
absl::StatusOr<ModelConfig> ParseShape(const std::string& text, int seq_len,
                                       const ModelConfig& defaults);

// `n` seeded tokens in [3, vocab), the first one BOS (1).
std::vector<int> Tokens(int n, int vocab, uint64_t seed);

// The selector's pairs for `estimate` at `ratio`; when the selector fails,
// says so on stderr and returns the uncompressed plan (the bench goes on).
CompressionPlan SelectOrNone(const SimilarityEstimate& estimate, int n_layers, double ratio);

// "a-b c-d": the pairs of `plan`.
std::string PairsString(const CompressionPlan& plan);

// The pairs `mode` stores with: minicache the static mid-depth pairs,
// krul-fixed the calibration set's, every other mode the conversation's own.
const CompressionPlan& PairsForMode(RestoreMode mode, const CompressionPlan& static_pairs,
                                    const CompressionPlan& fixed_pairs,
                                    const CompressionPlan& own_pairs);

// The start-up compute probe's points, spread over the lengths the bench
// restores (up to `seq_len`) so the fitted split holds where it is used.
ComputeProbeOptions RestoreComputeProbeOptions(int seq_len);

// Krul's TTFT against every mode's at one history length.
struct ModeComparison {
  std::map<RestoreMode, double> ttft_s;
  double storage_ratio = 0;  // load's stored bytes / krul's
  double efficiency = 0;     // krul's scheduler efficiency

  // ttft(mode) / ttft(krul): how many times faster krul restored.
  double Ratio(RestoreMode mode) const { return ttft_s.at(mode) / ttft_s.at(RestoreMode::kKrul); }
};

// From per-mode results with members ttft_s, stored_bytes, efficiency;
// `results` must hold every mode of kAllRestoreModes.
template <typename ModeResult>
ModeComparison CompareModes(const std::map<RestoreMode, ModeResult>& results) {
  ModeComparison c;
  for (const auto& [mode, r] : results) c.ttft_s[mode] = r.ttft_s;
  const ModeResult& k = results.at(RestoreMode::kKrul);
  c.storage_ratio = results.at(RestoreMode::kLoad).stored_bytes / k.stored_bytes;
  c.efficiency = k.efficiency;
  return c;
}

// The text table: header and one row per length, each without the newline
// (a program appends its own columns).
std::string ModeTableHeader();
std::string ModeTableRow(int history, const ModeComparison& c);

// `    {"history": N, "ratio_vs_<mode>": ..., "storage_ratio": ...,
// "efficiency": ...` : the start of one "results" entry, unterminated.
std::string ModeRatiosJson(int history, const ModeComparison& c);

// The `  "probe": {...},\n` and `  "pairs": {...},\n` lines of the JSON.
std::string ProbeJson(double probe_seconds, const ComputeCoefficients& compute,
                      const LoadCoefficients& load);
std::string PairsJson(const CompressionPlan& static_pairs, const CompressionPlan& fixed_pairs);

}  // namespace krul::bench

#endif  // KRUL_BENCH_KRUL_RESTORE_BENCH_COMMON_H_
