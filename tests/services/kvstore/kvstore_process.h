// Runs the built krul-kvstore binary as a child process on 127.0.0.1 with
// ephemeral ports, for integration tests. The child dies with the test
// process (PR_SET_PDEATHSIG), so a crashed test leaves no server behind.
#ifndef KRUL_TESTS_SERVICES_KVSTORE_KVSTORE_PROCESS_H_
#define KRUL_TESTS_SERVICES_KVSTORE_KVSTORE_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace krul::testing {

class KvStoreProcess {
 public:
  // Starts krul-kvstore with --host=127.0.0.1 --port=0 --metrics_port=-1
  // plus `args` (later flags win), and waits (up to `timeout`) for the line
  // that reports the bound ports.
  static absl::StatusOr<std::unique_ptr<KvStoreProcess>> Start(
      const std::vector<std::string>& args, absl::Duration timeout = absl::Seconds(20));

  // Kills the server if it still runs.
  ~KvStoreProcess();

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }

  // SIGKILL (a crash) and reap.
  void Kill();
  // SIGTERM and wait for exit; returns the exit code, or -1 when it did not
  // exit in time (it is killed then) or died from a signal.
  int Terminate(absl::Duration timeout = absl::Seconds(30));

 private:
  KvStoreProcess() = default;
  pid_t pid_ = -1;
  int port_ = 0;
  int metrics_port_ = -1;
  int stdout_fd_ = -1;
};

}  // namespace krul::testing

#endif  // KRUL_TESTS_SERVICES_KVSTORE_KVSTORE_PROCESS_H_
