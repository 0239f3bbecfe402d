// A calibration set for krul's choice of shared layer pairs: reference
// conversations, each with what can be seen at turn end (its merge-error
// profile, merge_error.h, and its layers' edge attention masses) and what
// sharing each single pair then cost its next turn (pair_costs.h).
//
// A new conversation's per-pair costs are predicted as the mean measured
// costs of its k nearest references by merge-error profile: the logs of its
// K and V merge errors over all pairs, centred and scaled per conversation
// (so the profile's shape counts, not its level), compared by mean squared
// difference. Conversations of one kind share their pairs' costs, and the
// profile finds the kind (on krulmix, krul_mix + krul_story conversations,
// a profile's 3 nearest references are of its own domain 99% of the time).
// With no references near, or none at all, nothing is predicted.
//
// The input-sensitive threshold is calibrated the same way: a quantile of
// the edge masses (SimilarityEstimate::EdgeMass) of every reference layer.
//
// Text form (one calibration file; tokens separated by single spaces,
// numbers as %.17g, upper triangles a < b in row order):
//   krul-pair-calibration 1
//   layers L
//   then per reference:
//   reference <id> <domain>        (no whitespace in either)
//   edge_mass L numbers
//   merge_key L(L-1)/2 numbers
//   merge_value L(L-1)/2 numbers
//   cost L(L-1)/2 numbers
//
// A PairCalibration is a value: copyable, thread-compatible; const methods
// are thread-safe.
#ifndef KRUL_COMPRESS_PAIR_CALIBRATION_H_
#define KRUL_COMPRESS_PAIR_CALIBRATION_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/compress/merge_error.h"

namespace krul {

struct PairReference {
  std::string id;
  std::string domain;  // informational ("shakespeare", ...)
  // (L, L) row-major symmetric, zero diagonal, as MergeErrors / pair_costs.
  std::vector<double> merge_key;
  std::vector<double> merge_value;
  std::vector<double> cost;
  std::vector<double> edge_mass;  // per layer
};

// Predicted per-pair costs of one conversation.
struct PairCostPrediction {
  std::vector<double> cost;             // (L, L), as PairReference::cost
  std::vector<std::string> neighbours;  // ids of the references averaged
  std::vector<std::string> domains;     // and their domains
};

class PairCalibration {
 public:
  PairCalibration() = default;
  explicit PairCalibration(int n_layers) : n_layers_(n_layers) {}

  int n_layers() const { return n_layers_; }
  const std::vector<PairReference>& references() const { return references_; }

  // INVALID_ARGUMENT when a vector has the wrong size, a value is negative
  // or not finite, or the id or domain is empty or has whitespace.
  absl::Status Add(PairReference reference);

  // The mean cost of the k references whose profiles are nearest `own`'s,
  // leaving out the reference named `exclude_id` (leave-one-out
  // evaluation; empty = none). FAILED_PRECONDITION when no reference is
  // left; INVALID_ARGUMENT for k < 1 or `own` of another layer count.
  absl::StatusOr<PairCostPrediction> Predict(const MergeErrors& own, int k,
                                             std::string_view exclude_id = {}) const;

  // The mean cost over every reference but `exclude_id` (the best fixed
  // choice the set knows of). FAILED_PRECONDITION when none is left.
  absl::StatusOr<std::vector<double>> MeanCost(std::string_view exclude_id = {}) const;

  // The q-quantile (q in [0, 1], linear interpolation) of the edge masses
  // of every layer of every reference but `exclude_id`: layers above it
  // are input-sensitive. FAILED_PRECONDITION when none is left;
  // INVALID_ARGUMENT for q outside [0, 1].
  absl::StatusOr<double> EdgeMassQuantile(double q, std::string_view exclude_id = {}) const;

 private:
  int n_layers_ = 0;
  std::vector<PairReference> references_;
};

// The text form above.
std::string SerializePairCalibration(const PairCalibration& calibration);
// INVALID_ARGUMENT naming the line for anything malformed.
absl::StatusOr<PairCalibration> ParsePairCalibration(std::string_view text);
// Reads / writes a file. NOT_FOUND / errors of the file system; parse errors.
absl::StatusOr<PairCalibration> ReadPairCalibration(const std::string& path);
absl::Status WritePairCalibration(const PairCalibration& calibration, const std::string& path);

}  // namespace krul

#endif  // KRUL_COMPRESS_PAIR_CALIBRATION_H_
