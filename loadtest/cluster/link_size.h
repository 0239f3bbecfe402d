// The testbed's link rate sized the way scripts/demo.sh sizes it: by
// krul-link-size, which measures the recompute of a history of N tokens on
// this machine with the worker's own compute probe and gives the rate at
// which fully loading that history takes the preset's fraction of it
// (ib400: 0.40, as a 400 Gbit/s link for LLaMA-7B on an H100). The
// measurement is real; the rate is derived from it.
#ifndef KRUL_LOADTEST_CLUSTER_LINK_SIZE_H_
#define KRUL_LOADTEST_CLUSTER_LINK_SIZE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace krul::loadtest {

struct LinkSizing {
  std::string preset;
  double gbit_per_s = 0;
  int history_tokens = 0;
  double recompute_ms = 0;  // measured here
  double full_load_ms = 0;  // the history's full load at gbit_per_s
  std::string sentence;     // what krul-link-size says (its stderr)
};

// Runs `link_size_bin` with `model_args` (--model F, or --synthetic
// [--synthetic_shape S]), --preset and --history_tokens (0: the tool's
// default, half the model's context). NOT_FOUND when the binary is
// missing; UNAVAILABLE when it fails or prints no KRUL_LINK_GBIT_PER_S (the
// message carries its output).
absl::StatusOr<LinkSizing> SizeLink(const std::string& link_size_bin,
                                    const std::vector<std::string>& model_args,
                                    const std::string& preset, int history_tokens);

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_CLUSTER_LINK_SIZE_H_
