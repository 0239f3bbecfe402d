// Helpers of the deployment tests: where the repository, the built binaries and the shared
// tools are, running a command and capturing what it prints, finding a tool on PATH.
#ifndef KRUL_TESTS_DEPLOY_DEPLOY_TEST_UTIL_H_
#define KRUL_TESTS_DEPLOY_DEPLOY_TEST_UTIL_H_

#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace krul::deploy_test {

// The repository root (compiled in).
std::string SourceDir();
// The folder holding krul-kvstore, krul-worker and krul-replay (compiled in).
std::string BinDir();
// ../shared/tools beside the repository, or $KRUL_SHARED_TOOLS_DIR; empty when absent.
std::string SharedToolsDir();

// The first executable `name` on PATH (or `env_override` when that variable is set and
// names an executable); empty when there is none.
std::string FindTool(const std::string& name, const std::string& env_override = "");

struct CommandResult {
  int exit_code = -1;  // -1: killed by a signal or timed out
  bool timed_out = false;
  std::string output;  // stdout and stderr, interleaved as written
};

// Runs argv (argv[0] looked up on PATH unless it holds a '/') in `cwd` (empty: the current
// folder), with `extra_env` ("NAME=value") added to the environment, and waits at most
// `timeout` (then its process group is killed).
CommandResult RunCommand(const std::vector<std::string>& argv, const std::string& cwd = "",
                         absl::Duration timeout = absl::Seconds(120),
                         const std::vector<std::string>& extra_env = {});

// The whole file; empty when it cannot be read.
std::string ReadFile(const std::string& path);
// Writes `content` to `path`; false on error.
bool WriteFile(const std::string& path, const std::string& content);
// A fresh folder under $TMPDIR (or /tmp), removed by RemoveTree.
std::string MakeTempDir(const std::string& prefix);
void RemoveTree(const std::string& path);

// A fresh temporary folder that is removed, with its contents, when this goes out of scope
// (also when an ASSERT returns early). path() is empty when it could not be made.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& prefix) : path_(MakeTempDir(prefix)) {}
  ~ScopedTempDir() { RemoveTree(path_); }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};
// Files in `dir` whose name ends with `suffix`, sorted, as full paths.
std::vector<std::string> ListFiles(const std::string& dir, const std::string& suffix);

// The first line of `text` that contains `needle` ("" when none): for failure messages.
std::string LineWith(const std::string& text, const std::string& needle);

// The flag names (without "--") that `binary --helpfull` lists.
std::set<std::string> BinaryFlags(const std::string& binary);

}  // namespace krul::deploy_test

#endif  // KRUL_TESTS_DEPLOY_DEPLOY_TEST_UTIL_H_
