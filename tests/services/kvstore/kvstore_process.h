// Runs the built krul-kvstore binary as a child process on 127.0.0.1 with
// ephemeral ports, for integration tests. The process handling (fork/exec,
// reading stdout, dying with the test process) is test_support's
// ChildProcess; this adds krul-kvstore's flags and port line.
#ifndef KRUL_TESTS_SERVICES_KVSTORE_KVSTORE_PROCESS_H_
#define KRUL_TESTS_SERVICES_KVSTORE_KVSTORE_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "test_support/child_process.h"

namespace krul::testing {

class KvStoreProcess {
 public:
  // Starts krul-kvstore with --host=127.0.0.1 --port=0 --metrics_port=-1
  // plus `args` (later flags win), and waits (up to `timeout`) for the line
  // that reports the bound ports.
  static absl::StatusOr<std::unique_ptr<KvStoreProcess>> Start(
      const std::vector<std::string>& args, absl::Duration timeout = absl::Seconds(20));

  // Destroying it kills the server if it still runs.

  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // -1 once the server has been reaped.
  pid_t pid() const { return process_->pid(); }

  // SIGKILL (a crash) and reap.
  void Kill() { process_->Kill(); }
  // SIGTERM and wait for exit; returns the exit code, or -1 when it did not
  // exit in time (it is killed then) or died from a signal.
  int Terminate(absl::Duration timeout = absl::Seconds(30)) { return process_->Terminate(timeout); }

 private:
  explicit KvStoreProcess(std::unique_ptr<ChildProcess> process) : process_(std::move(process)) {}
  std::unique_ptr<ChildProcess> process_;  // never null
  int port_ = 0;
  int metrics_port_ = -1;
};

}  // namespace krul::testing

#endif  // KRUL_TESTS_SERVICES_KVSTORE_KVSTORE_PROCESS_H_
