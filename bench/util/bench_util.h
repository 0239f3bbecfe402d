// Small helpers shared by the benchmark programs in bench/: statistics over
// rounds, the shared-data folder lookup and stopping at the first error.
// Depends on the standard library and Abseil's Status only, so every
// benchmark (engine-only builds and CUDA builds included) can link it.
#ifndef KRUL_BENCH_UTIL_BENCH_UTIL_H_
#define KRUL_BENCH_UTIL_BENCH_UTIL_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace krul::bench {

// The median of `v` (the upper one for an even count). `v` must not be empty.
double Median(std::vector<double> v);

// The largest / smallest element of `v`: best-of statistics (the best
// throughput, the least time) for timings that noise only makes worse.
// `v` must not be empty.
double Max(const std::vector<double>& v);
double Min(const std::vector<double>& v);

// The shared data folder: `flag_value` when set, else $KRUL_DATA_DIR when
// set, else "../shared/data" (the layout of a checkout beside shared/).
std::string DataDir(const std::string& flag_value);

// A benchmark stops at the first error: prints "<what>: <status>" on stderr
// and exits with status 1 when `status` is not OK.
void CheckOk(const absl::Status& status, const std::string& what);

// The value of `value`, or CheckOk's exit.
template <typename T>
T ValueOrDie(absl::StatusOr<T> value, const std::string& what) {
  CheckOk(value.status(), what);
  return *std::move(value);
}

}  // namespace krul::bench

#endif  // KRUL_BENCH_UTIL_BENCH_UTIL_H_
