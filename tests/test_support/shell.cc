#include "test_support/shell.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>

namespace krul::testing {

ShellResult RunShell(const std::string& command, bool merge_stderr) {
  ShellResult result;
  FILE* pipe = popen((merge_stderr ? command + " 2>&1" : command).c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    result.output.append(buffer.data(), n);
  }
  const int status = pclose(pipe);
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

}  // namespace krul::testing
