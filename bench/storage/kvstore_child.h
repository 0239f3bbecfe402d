// A krul-kvstore process for the storage benchmarks: started on 127.0.0.1
// (ephemeral port unless one is given, no metrics listener) with extra
// flags, ready once it prints its listening line, stopped with SIGTERM when
// destroyed. The process handling is krul::ChildProcess.
#ifndef KRUL_BENCH_STORAGE_KVSTORE_CHILD_H_
#define KRUL_BENCH_STORAGE_KVSTORE_CHILD_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "krul/base/child_process.h"

namespace krul::bench {

class KvStoreChild {
 public:
  // Runs `binary` with --host=127.0.0.1 --port=`port` --metrics_port=-1 and
  // then `args` (later flags win). Errors as krul::ChildProcess::Start.
  static absl::StatusOr<std::unique_ptr<KvStoreChild>> Start(
      const std::string& binary, const std::vector<std::string>& args, int port = 0,
      absl::Duration timeout = absl::Seconds(60));
  ~KvStoreChild();  // SIGTERM and wait (a clean shutdown), SIGKILL if it hangs

  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return process_->pid(); }
  // SIGKILL (a crash) and reap.
  void Kill() { process_->Kill(); }

 private:
  KvStoreChild(std::unique_ptr<ChildProcess> process, int port);
  std::unique_ptr<ChildProcess> process_;  // never null
  int port_;
};

}  // namespace krul::bench

#endif  // KRUL_BENCH_STORAGE_KVSTORE_CHILD_H_
