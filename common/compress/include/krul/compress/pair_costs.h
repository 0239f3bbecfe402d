// What storing a conversation's KV with a given set of shared layer pairs
// costs its next tokens, measured with the model itself: the history is
// compressed (compressor.h, exactly as it would be stored), restored into a
// fresh cache, and a continuation teacher-forced as one block; the cost is
// the mean KL(uncompressed || restored) of the continuation's next-token
// distributions, and the agreement the share of positions whose most likely
// token is unchanged.
//
// MeasurePairCosts does this for every single layer pair: the measured
// per-pair costs a calibration set carries (pair_calibration.h) and the
// pair oracle reports.
//
// Thread safety: drives `backend` (one thread at a time, like any caller
// of it); otherwise pure.
#ifndef KRUL_COMPRESS_PAIR_COSTS_H_
#define KRUL_COMPRESS_PAIR_COSTS_H_

#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/engine/backend.h"
#include "krul/engine/kv_cache.h"

namespace krul {

struct PlanQuality {
  double kl = 0;         // mean over the continuation's positions
  double agreement = 0;  // share of positions with the same top-1 token
};

// A conversation's history and what followed it, for measuring.
class PlanProbe {
 public:
  // `cache` holds the history's K/V for [0, history) (host rows; borrowed,
  // must outlive the probe); `continuation` follows it. Runs the reference
  // (uncompressed) continuation on `backend` once. INVALID_ARGUMENT for an
  // empty history or continuation, a cache of another shape than the
  // backend's model, or history + continuation beyond the model's context;
  // backend errors.
  static absl::StatusOr<PlanProbe> Create(ComputeBackend& backend, const KvCache& cache,
                                          int history, std::span<const int> continuation);

  // The cost of storing the history with `plan` (and `options`: dtype,
  // retention). INVALID_ARGUMENT for a plan that does not fit the model;
  // errors of the compressor and the backend.
  absl::StatusOr<PlanQuality> Measure(const CompressionPlan& plan,
                                      const CompressorOptions& options = {}) const;

  // Measure of every single pair (a, b), a < b, in an (L, L) row-major
  // symmetric matrix of KL costs with a zero diagonal.
  absl::StatusOr<std::vector<double>> MeasureEveryPair(const CompressorOptions& options = {}) const;

  int history() const { return history_; }

 private:
  PlanProbe(ComputeBackend* backend, const KvCache* cache, int history,
            std::vector<int> continuation, std::vector<std::vector<double>> reference)
      : backend_(backend),
        cache_(cache),
        history_(history),
        continuation_(std::move(continuation)),
        reference_(std::move(reference)) {}

  ComputeBackend* backend_;
  const KvCache* cache_;
  int history_;
  std::vector<int> continuation_;
  std::vector<std::vector<double>> reference_;  // log-probabilities per position
};

}  // namespace krul

#endif  // KRUL_COMPRESS_PAIR_COSTS_H_
