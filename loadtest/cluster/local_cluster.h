// A kvstore and N workers on 127.0.0.1 for one krul-loadtest run, started
// the way scripts/demo.sh starts them (ephemeral ports, RocksDB in a
// directory of the run) and stopped again. On the disaggregated testbed
// (testbed.h) each process runs under an argv prefix (`ip netns exec NS
// ...`) and the workers reach the kvstore at its storage-node address. Each process writes its
// stdout and stderr to LOG_DIR/<name>.log; the "listening on" line it prints there gives its port.
// The children run in their own process group (a Ctrl-C at the terminal reaches only krul-loadtest,
// which then stops them in order) and die with krul-loadtest if it dies (PR_SET_PDEATHSIG).
//
// Not thread-safe: one thread starts and stops a cluster.
#ifndef KRUL_LOADTEST_CLUSTER_LOCAL_CLUSTER_H_
#define KRUL_LOADTEST_CLUSTER_LOCAL_CLUSTER_H_

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/endpoint.h"

namespace krul::loadtest {

struct LocalClusterOptions {
  std::string bin_dir;  // holds krul-kvstore and krul-worker
  int workers = 1;
  // Model flags of every worker (--model/--tokenizer, or --synthetic ...).
  std::vector<std::string> model_args;
  std::vector<std::string> extra_worker_args;  // appended to each worker's flags
  std::string log_dir;                         // logs and the RocksDB directory
  absl::Duration start_timeout = absl::Seconds(120);
  // Placement. By default every process runs here and listens on
  // 127.0.0.1. On a testbed: the kvstore runs under kvstore_prefix and
  // listens on kvstore_host; the workers run under worker_prefix, listen
  // on their own namespace's 127.0.0.1 and reach the kvstore at
  // kvstore_host. The prefixes are prepended to argv as they are
  // (`ip netns exec NS env ...`; the kernel keeps the pid across exec).
  std::vector<std::string> kvstore_prefix;
  std::vector<std::string> worker_prefix;
  std::string kvstore_host = "127.0.0.1";
  std::vector<std::string> extra_kvstore_args;  // appended to the kvstore's flags
  // When set and true (a Ctrl-C), Start stops waiting: CANCELLED.
  const std::atomic<bool>* cancel = nullptr;
};

class LocalCluster {
 public:
  // Starts the kvstore, then the workers (all at once), and waits until each
  // prints its port. NOT_FOUND when a binary is missing; UNAVAILABLE when a
  // process exits or stays silent past start_timeout (the message carries
  // the end of its log); CANCELLED when options.cancel turns true; INTERNAL
  // when fork or a directory fails. Whatever was started is stopped again
  // on error.
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const LocalClusterOptions& options);
  ~LocalCluster();  // Stop()s

  const std::vector<Endpoint>& workers() const { return workers_; }
  const Endpoint& kvstore() const { return kvstore_; }  // gRPC
  const Endpoint& kvstore_metrics() const { return kvstore_metrics_; }

  // SIGTERM to every worker, then the kvstore; each gets 30 s to exit
  // before SIGKILL. Removes the RocksDB directory, keeps the logs. INTERNAL
  // naming the processes that did not exit cleanly. Idempotent.
  absl::Status Stop();

 private:
  struct Process {
    std::string name;
    pid_t pid = -1;
    std::string log;
  };
  LocalCluster() = default;
  // Runs prefix + argv; argv[0] (the binary) must exist.
  absl::StatusOr<Process> Spawn(const std::string& name, const std::vector<std::string>& prefix,
                                const std::vector<std::string>& argv);
  // Waits for `marker` in the process's log; the line holding it.
  absl::StatusOr<std::string> WaitForLine(const Process& p, const std::string& marker,
                                          absl::Time deadline);

  LocalClusterOptions options_;
  std::vector<Process> processes_;  // kvstore first
  std::vector<Endpoint> workers_;
  Endpoint kvstore_;
  Endpoint kvstore_metrics_;
  std::string db_dir_;
  bool stopped_ = false;
};

// The directory of the running executable (/proc/self/exe), where
// krul-loadtest finds krul-kvstore and krul-worker by default.
std::string SelfBinDir();

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_CLUSTER_LOCAL_CLUSTER_H_
