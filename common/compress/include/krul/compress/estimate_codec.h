// A conversation's similarity estimate as bytes, so it can travel with the
// conversation's stored plan from one turn (and worker) to the next, and
// the carrying rule: older turns' statistics decay by a factor per turn.
//
// Byte layout (little-endian, version 1; T = n_layers (n_layers - 1) / 2,
// the upper triangle a < b in row order):
//   "KRSE" | u16 version=1 | u16 flags=0 | u32 n_layers | f64 edge_fraction |
//   f64 rows_represented | i64 prefill_tokens | i64 decode_tokens |
//   i64 rows_compared | u8 sampled |
//   T x f64 prefill_distance | T x f64 decode_distance |
//   n_layers x f64 first_mass_sum | n_layers x f64 last_mass_sum |
//   n_layers x f64 mass_weight | u64 FNV-1a-64 of all preceding bytes
// `distance` is rebuilt as prefill + decode; timings are not stored.
//
// Thread-safe (pure functions).
#ifndef KRUL_COMPRESS_ESTIMATE_CODEC_H_
#define KRUL_COMPRESS_ESTIMATE_CODEC_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/compress/similarity_estimator.h"

namespace krul {

// The estimate must be well formed (sizes match n_layers in [1, 4096]);
// INVALID_ARGUMENT otherwise.
absl::StatusOr<std::string> SerializeEstimate(const SimilarityEstimate& estimate);

// DATA_LOSS for truncated or trailing bytes, a wrong magic or checksum
// (the checksum is checked first);
// UNIMPLEMENTED for another version or unknown flags; INVALID_ARGUMENT for
// a layer count outside [1, 4096] or a negative / non-finite statistic.
absl::StatusOr<SimilarityEstimate> ParseEstimate(std::string_view bytes);

// A conversation's estimate after one more turn: `carried` (the turns
// before, as stored) with every sum multiplied by `decay` in [0, 1], plus
// `turn`. decay 1 = all turns count alike; 0 = the last turn only. Token
// counts add up undecayed (they say what was observed). INVALID_ARGUMENT
// when the layer counts or edge fractions differ or decay is outside [0, 1].
absl::StatusOr<SimilarityEstimate> CarryEstimate(const SimilarityEstimate& carried,
                                                 const SimilarityEstimate& turn, double decay);

}  // namespace krul

#endif  // KRUL_COMPRESS_ESTIMATE_CODEC_H_
