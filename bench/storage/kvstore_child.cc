#include "storage/kvstore_child.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace krul::bench {

absl::StatusOr<std::unique_ptr<KvStoreChild>> KvStoreChild::Start(
    const std::string& binary, const std::vector<std::string>& args, int port,
    absl::Duration timeout) {
  std::vector<std::string> argv = {binary, "--host=127.0.0.1", absl::StrCat("--port=", port),
                                   "--metrics_port=-1"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto process = ChildProcess::Start(argv, "krul-kvstore listening on", timeout);
  if (!process.ok()) return process.status();
  const int bound = PortFromLine((*process)->ready_line());
  if (bound <= 0) {
    return absl::InternalError(
        absl::StrCat("no port in krul-kvstore's line: ", (*process)->ready_line()));
  }
  return std::unique_ptr<KvStoreChild>(new KvStoreChild(*std::move(process), bound));
}

KvStoreChild::KvStoreChild(std::unique_ptr<ChildProcess> process, int port)
    : process_(std::move(process)), port_(port) {}

KvStoreChild::~KvStoreChild() { process_->Terminate(absl::Seconds(30)); }

}  // namespace krul::bench
