// A binary run as a child process (a server under test or under a benchmark): started with argv,
// its stdout read line by line until a marker (e.g. a "listening on" line)
// arrives, stopped with SIGTERM or SIGKILL. The child dies with its parent
// (PR_SET_PDEATHSIG), so a crashed test or benchmark leaves nothing behind;
// its stderr goes to the parent's. Not thread-safe: one thread drives an object.
#ifndef KRUL_BASE_CHILD_PROCESS_H_
#define KRUL_BASE_CHILD_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace krul {

class ChildProcess {
 public:
  // Runs `argv` (argv[0] is the binary path) and reads its stdout until a
  // line containing `ready_marker` arrives (returned in ready_line()).
  // INTERNAL when pipe/fork fail; FAILED_PRECONDITION when the child exits
  // (or closes stdout) first; DEADLINE_EXCEEDED when `timeout` passes. On
  // error the child is killed and reaped.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      const std::vector<std::string>& argv, const std::string& ready_marker,
      absl::Duration timeout = absl::Seconds(30));
  ~ChildProcess();  // kills the child if it still runs

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  const std::string& ready_line() const { return ready_line_; }
  // Lines printed before the ready line, then the ready line itself, and
  // any further lines read by WaitForLine.
  const std::vector<std::string>& lines() const { return lines_; }
  // Reads stdout until a line containing `marker` (e.g. a second port
  // line); errors as for Start, but the child is left running.
  absl::StatusOr<std::string> WaitForLine(const std::string& marker,
                                          absl::Duration timeout = absl::Seconds(10));
  // -1 once the child has been reaped.
  pid_t pid() const { return pid_; }

  // SIGKILL and reap; a no-op when already reaped.
  void Kill();
  // SIGTERM, wait; the exit code, or -1 when it died from a signal or did
  // not exit within `timeout` (then it is killed).
  int Terminate(absl::Duration timeout = absl::Seconds(20));

 private:
  ChildProcess() = default;
  absl::StatusOr<std::string> ReadLineUntil(const std::string& marker, absl::Time deadline);

  pid_t pid_ = -1;
  int stdout_fd_ = -1;
  std::string buffer_;  // bytes read past the last complete line
  std::string ready_line_;
  std::vector<std::string> lines_;
};

// The port at the end of "... listening on HOST:PORT" (the line the Krul
// servers print once bound), or 0 when the line has none.
int PortFromLine(const std::string& line);

}  // namespace krul

#endif  // KRUL_BASE_CHILD_PROCESS_H_
