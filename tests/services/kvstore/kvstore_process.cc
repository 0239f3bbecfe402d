#include "kvstore_process.h"

#include <cstdio>
#include <utility>

#include "absl/strings/str_cat.h"

#ifndef KRUL_KVSTORE_BINARY
#error "KRUL_KVSTORE_BINARY must name the krul-kvstore executable"
#endif

namespace krul::testing {

absl::StatusOr<std::unique_ptr<KvStoreProcess>> KvStoreProcess::Start(
    const std::vector<std::string>& args, absl::Duration timeout) {
  std::vector<std::string> argv = {KRUL_KVSTORE_BINARY, "--host=127.0.0.1", "--port=0",
                                   "--metrics_port=-1"};
  argv.insert(argv.end(), args.begin(), args.end());
  // Libraries (UCX) may print warnings to stdout first: look for our line.
  static constexpr char kReady[] = "krul-kvstore listening on ";
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = ChildProcess::Start(argv, kReady, timeout);
  if (!child.ok()) return child.status();
  std::unique_ptr<KvStoreProcess> p(new KvStoreProcess(*std::move(child)));
  const std::string& line = p->process_->ready_line();
  const char* text = line.c_str() + line.find(kReady);
  if (std::sscanf(text, "krul-kvstore listening on 127.0.0.1:%d metrics_port %d", &p->port_,
                  &p->metrics_port_) != 2) {
    return absl::InternalError(absl::StrCat("unexpected port line: ", line));
  }
  return p;
}

}  // namespace krul::testing
