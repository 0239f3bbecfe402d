// --help for the Krul binaries: Abseil's --help lists only the flags defined
// in files it takes for the program's main file (by default one named after
// the binary, e.g. krul-kvstore.cc), so for ours it printed "No flags
// matched." InitFlagsUsage makes --help (and --helpshort) list the flags of
// the binary's own main file, and --helpfull every flag linked in (gRPC's,
// Abseil's, ...).
//
// Call once in main() before absl::ParseCommandLine. Not thread-safe.
#ifndef KRUL_BASE_FLAGS_USAGE_H_
#define KRUL_BASE_FLAGS_USAGE_H_

#include "absl/strings/string_view.h"

namespace krul {

// `usage`: the program usage message (first line: what the binary is; then
// example command lines). `main_file`: the path suffix of the file that
// defines the binary's flags, e.g. "kvstore/main.cc".
void InitFlagsUsage(absl::string_view usage, absl::string_view main_file);

}  // namespace krul

#endif  // KRUL_BASE_FLAGS_USAGE_H_
