// A shell command run to completion for tests: its output and exit code.
// For commands that end by themselves (a binary's --help, a script's
// check); bound anything that might not with `timeout`.
#ifndef KRUL_TESTS_TEST_SUPPORT_SHELL_H_
#define KRUL_TESTS_TEST_SUPPORT_SHELL_H_

#include <string>

namespace krul::testing {

struct ShellResult {
  int exit_code = -1;  // -1: it could not run, or died from a signal
  std::string output;  // stdout, and stderr too when merged
};

// Runs `command` with /bin/sh and reads all it prints. With `merge_stderr`
// its stderr is collected as well (`2>&1`); otherwise it goes to the test's.
ShellResult RunShell(const std::string& command, bool merge_stderr = true);

}  // namespace krul::testing

#endif  // KRUL_TESTS_TEST_SUPPORT_SHELL_H_
