#include "cluster/link_size.h"

#include <unistd.h>

#include <cstdio>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "cluster/command.h"

namespace krul::loadtest {

absl::StatusOr<LinkSizing> SizeLink(const std::string& link_size_bin,
                                    const std::vector<std::string>& model_args,
                                    const std::string& preset, int history_tokens) {
  if (access(link_size_bin.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat(link_size_bin,
                                            " not found or not executable (build krul-link-size, "
                                            "or give --link_gbit_per_s)"));
  }
  std::vector<std::string> argv = {link_size_bin};
  argv.insert(argv.end(), model_args.begin(), model_args.end());
  argv.insert(argv.end(), {"--preset", preset});
  if (history_tokens > 0)
    argv.insert(argv.end(), {"--history_tokens", absl::StrCat(history_tokens)});
  // stdout (KRUL_LINK_* lines) and stderr (the sentence) together: the
  // sentence is the one line that is not an assignment.
  auto r = RunCommand(argv, "", absl::Minutes(5));
  if (!r.ok()) return r.status();
  std::map<std::string, std::string> values;
  LinkSizing sizing;
  sizing.preset = preset;
  for (absl::string_view line : absl::StrSplit(r->output, '\n', absl::SkipWhitespace())) {
    if (absl::StartsWith(line, "KRUL_LINK_")) {
      std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
      values[kv.first] = kv.second;
    } else if (absl::StartsWith(line, "krul-link-size: ")) {
      sizing.sentence = std::string(absl::StripPrefix(line, "krul-link-size: "));
    }
  }
  if (r->code != 0 || !absl::SimpleAtod(values["KRUL_LINK_GBIT_PER_S"], &sizing.gbit_per_s) ||
      !(sizing.gbit_per_s > 0)) {
    return absl::UnavailableError(
        absl::StrCat("krul-link-size ", r->timed_out ? "timed out" : "failed", ":\n", r->output));
  }
  (void)absl::SimpleAtoi(values["KRUL_LINK_HISTORY_TOKENS"], &sizing.history_tokens);
  (void)absl::SimpleAtod(values["KRUL_LINK_RECOMPUTE_MS"], &sizing.recompute_ms);
  (void)absl::SimpleAtod(values["KRUL_LINK_FULL_LOAD_MS"], &sizing.full_load_ms);
  return sizing;
}

}  // namespace krul::loadtest
