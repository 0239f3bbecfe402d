#include "krul/base/flags_usage.h"

#include <string>

#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

namespace krul {

void InitFlagsUsage(absl::string_view usage, absl::string_view main_file) {
  absl::SetProgramUsageMessage(usage);
  absl::FlagsUsageConfig config;
  // The config keeps the predicate; it must own its copy of the suffix.
  config.contains_helpshort_flags = [suffix = std::string(main_file)](absl::string_view file) {
    return absl::EndsWith(file, suffix);
  };
  config.contains_help_flags = config.contains_helpshort_flags;
  absl::SetFlagsUsageConfig(config);
}

}  // namespace krul
