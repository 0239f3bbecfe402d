// Which layers of one conversation share their KV (the selector's output),
// and its serialized form, stored with the conversation.
//
// A plan pairs layers (a, b), a < b; a layer is in at most one pair, and an
// input-sensitive layer is in none. The KV of a pair is stored once (merged
// directions plus both layers' norms, see compressor.h), so the nominal
// compression ratio counts layers: n_layers / (n_layers - pairs), in [1, 2].
//
// A CompressionPlan is a plain value: copyable, thread-compatible.
#ifndef KRUL_COMPRESS_COMPRESSION_PLAN_H_
#define KRUL_COMPRESS_COMPRESSION_PLAN_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace krul {

struct LayerPair {
  int first = 0;   // the smaller layer index
  int second = 0;  // the larger layer index
  // D[first][second] per represented row when selected (SimilarityEstimate::
  // MeanDistance); informational.
  double distance = 0;

  friend bool operator==(const LayerPair&, const LayerPair&) = default;
};

struct CompressionPlan {
  int n_layers = 0;
  // In selection order (most similar first).
  std::vector<LayerPair> pairs;
  // Per layer: 1 when input-sensitive (never shared), else 0.
  std::vector<uint8_t> input_sensitive;
  // What the selector was asked for and used (for reports and re-planning).
  double target_ratio = 1.0;
  double sensitivity_threshold = 1.0;  // edge mass above which a layer is sensitive
  double edge_fraction = 0.1;
  double quality_budget = 0;  // most the pairs' scores may sum to; 0 = the fixed ratio

  // n_layers / (n_layers - pairs.size()); 1 for an empty plan.
  double ratio() const;
  // Layers whose KV is stored: n_layers - pairs.size().
  int stored_layers() const { return n_layers - static_cast<int>(pairs.size()); }
  // The layer `layer` shares with, or -1. O(pairs).
  int PartnerOf(int layer) const;
  bool IsShared(int layer) const { return PartnerOf(layer) >= 0; }

  // A plan with no pairs (ratio 1) for n_layers layers.
  static CompressionPlan Uncompressed(int n_layers);

  friend bool operator==(const CompressionPlan&, const CompressionPlan&) = default;
};

// OK when n_layers in [1, 4096], input_sensitive has n_layers entries of 0/1,
// every pair has 0 <= first < second < n_layers, no layer appears twice, no
// sensitive layer is paired, and every number is finite (ratio target in
// [1, 2], thresholds >= 0, edge fraction in (0, 0.5]). INVALID_ARGUMENT naming
// the problem otherwise.
absl::Status ValidatePlan(const CompressionPlan& plan);

// Binary form, little-endian (version 1):
//   "KRPL" | u16 version=1 | u16 flags=0 | u32 n_layers | f64 target_ratio |
//   f64 sensitivity_threshold | f64 edge_fraction | f64 quality_budget |
//   u32 n_pairs | n_pairs x (u32 first, u32 second, f64 distance) |
//   ceil(n_layers/8) bytes sensitivity bitmap (bit l%8 of byte l/8) |
//   u64 FNV-1a-64 of all preceding bytes
// The plan must validate (checked by the caller; serializing an invalid plan
// produces bytes that ParsePlan rejects).
std::string SerializePlan(const CompressionPlan& plan);

// Parses SerializePlan's output. DATA_LOSS for truncated or trailing bytes,
// a wrong magic or a checksum mismatch; UNIMPLEMENTED for another version or
// unknown flags; INVALID_ARGUMENT when the decoded plan does not validate.
absl::StatusOr<CompressionPlan> ParsePlan(std::string_view bytes);

// "layers=12 ratio=1.50 pairs=[(3,7) (4,5)] sensitive=[0 11]".
std::string PlanDebugString(const CompressionPlan& plan);

}  // namespace krul

#endif  // KRUL_COMPRESS_COMPRESSION_PLAN_H_
