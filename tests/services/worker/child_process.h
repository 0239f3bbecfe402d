// A server binary run as a child process for integration tests: started
// with argv, its stdout read until a "listening" line, stopped with SIGTERM
// (or killed). The child dies with the test process (PR_SET_PDEATHSIG), so
// a crashed test leaves nothing behind; its stderr goes to the test's.
#ifndef KRUL_TESTS_SERVICES_WORKER_CHILD_PROCESS_H_
#define KRUL_TESTS_SERVICES_WORKER_CHILD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace krul::testing {

class ChildProcess {
 public:
  // Runs `argv` (argv[0] is the binary path) and reads its stdout until a
  // line containing `ready_marker` arrives (returned in ready_line()), the
  // child exits (FAILED_PRECONDITION) or `timeout` passes
  // (DEADLINE_EXCEEDED; the child is killed).
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      const std::vector<std::string>& argv, const std::string& ready_marker,
      absl::Duration timeout = absl::Seconds(30));
  ~ChildProcess();  // kills the child if it still runs

  const std::string& ready_line() const { return ready_line_; }
  // Lines printed before the ready line, then the ready line itself, and
  // any further lines read by WaitForLine.
  const std::vector<std::string>& lines() const { return lines_; }
  // Reads stdout until a line containing `marker` (e.g. a second port line).
  absl::StatusOr<std::string> WaitForLine(const std::string& marker,
                                          absl::Duration timeout = absl::Seconds(10));
  pid_t pid() const { return pid_; }

  // SIGKILL and reap.
  void Kill();
  // SIGTERM, wait; the exit code, or -1 when it died from a signal or did
  // not exit within `timeout` (then it is killed).
  int Terminate(absl::Duration timeout = absl::Seconds(20));

 private:
  ChildProcess() = default;
  absl::StatusOr<std::string> ReadLineUntil(const std::string& marker, absl::Time deadline);
  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string buffer_;
  std::string ready_line_;
  std::vector<std::string> lines_;
};

// The port at the end of "... listening on HOST:PORT" (0 if none).
int PortFromLine(const std::string& line);

}  // namespace krul::testing

#endif  // KRUL_TESTS_SERVICES_WORKER_CHILD_PROCESS_H_
