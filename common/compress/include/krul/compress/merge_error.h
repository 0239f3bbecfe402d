// What sharing each layer pair would do to one conversation's own KV: the
// error of the compressor's SLERP merge (compressor.h), measured on the
// cache before it is stored, for every pair at once.
//
// For a unit (token, KV head, K or V) with rows x_a, x_b of layers a < b at
// angle W, the compressor keeps both norms and one merged direction m (the
// SLERP midpoint), so layer a restores as |x_a| m and
//
//   |x_a - |x_a| m|^2 + |x_b - |x_b| m|^2 = (|x_a|^2 + |x_b|^2) (2 - 2 cos(W/2)).
//
// A unit whose angle exceeds the retention angle is stored exactly (error
// 0). Per pair, the K and the V errors are summed over the measured tokens
// and divided by the energy sum (|x_a|^2 + |x_b|^2) over the same units:
// a relative squared error in [0, 2] (0 = the layers' rows point the same
// way; 2 would need opposite rows everywhere).
//
// Optional per-layer token weights (e.g. the attention each key received,
// MergeErrorOptions::token_weights) weigh each layer's part of a unit, so
// tokens the model reads count more than tokens it ignores.
//
// Thread-safe (pure functions).
#ifndef KRUL_COMPRESS_MERGE_ERROR_H_
#define KRUL_COMPRESS_MERGE_ERROR_H_

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "krul/compress/compressor.h"
#include "krul/engine/kv_cache.h"

namespace krul {

struct MergeErrorOptions {
  // Units at a wider angle are retained by the compressor (no error). In
  // [0, 180]; 180 = nothing retained (the compressor's default).
  double retain_angle_degrees = 180.0;
  // Empty, or (n_layers, end - begin) row-major non-negative weights of each
  // layer's rows of the measured tokens (both the error and the energy are
  // weighted). A layer whose weights are all 0 counts as unweighted.
  std::span<const double> token_weights;
};

// Per layer pair, relative squared merge errors of K and of V.
struct MergeErrors {
  int n_layers = 0;
  // (n_layers, n_layers) row-major, symmetric, zero diagonal.
  std::vector<double> key;
  std::vector<double> value;
  // Units (over both tensors) whose angle exceeds the retention angle, per
  // pair (what retaining them would store).
  std::vector<double> retained_units;

  double Key(int a, int b) const { return key[static_cast<size_t>(a) * n_layers + b]; }
  double Value(int a, int b) const { return value[static_cast<size_t>(a) * n_layers + b]; }
  // K and V together: the mean of the two relative errors.
  double Both(int a, int b) const { return 0.5 * (Key(a, b) + Value(a, b)); }
};

// Measures every pair of `cache`'s layers over tokens [begin, end).
// INVALID_ARGUMENT when the shape does not validate or does not match the
// cache, the range is empty or outside the cache, the options are out of
// range or the weights have the wrong size or a negative / non-finite value.
absl::StatusOr<MergeErrors> MeasureMergeErrors(const KvCache& cache, const KvShape& shape,
                                               int begin, int end,
                                               const MergeErrorOptions& options = {});

}  // namespace krul

#endif  // KRUL_COMPRESS_MERGE_ERROR_H_
