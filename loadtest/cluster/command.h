// A helper program run to completion by krul-loadtest (deploy/local/
// testbed.sh, krul-link-size): its stdout captured, its stderr appended to a
// log file or captured too, killed when it outlives a timeout. The program
// runs in its own process group: a Ctrl-C at the terminal reaches only
// krul-loadtest, which then tears down in order instead of cutting a
// script short halfway.
//
// Thread-safe (no shared state); blocks the calling thread.
#ifndef KRUL_LOADTEST_CLUSTER_COMMAND_H_
#define KRUL_LOADTEST_CLUSTER_COMMAND_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace krul::loadtest {

struct CommandResult {
  int code = -1;  // exit code; -1 when killed by a signal or timed out
  bool timed_out = false;
  std::string output;  // stdout (and stderr when not sent to a file)
};

// Runs argv (argv[0] a path) with stderr appended to `stderr_path`, or
// captured with stdout when it is empty. A non-zero exit is a result, not
// an error; INTERNAL only when pipe or fork fail. A program that does not
// exec (missing) exits 127.
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         const std::string& stderr_path, absl::Duration timeout);

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_CLUSTER_COMMAND_H_
