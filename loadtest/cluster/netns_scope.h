// Moves the calling thread into a named network namespace (one made by
// `ip netns add`, i.e. /run/netns/NAME) and back: the HTTP client of a
// testbed run must reach workers that listen on the compute namespace's
// loopback. A network namespace belongs to a thread: sockets opened by the
// thread, and threads and processes it creates afterwards, are in the new
// namespace; other threads are not moved. So enter before starting any
// thread that talks to the workers.
//
// Not thread-safe: the thread that entered leaves.
#ifndef KRUL_LOADTEST_CLUSTER_NETNS_SCOPE_H_
#define KRUL_LOADTEST_CLUSTER_NETNS_SCOPE_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace krul::loadtest {

class NetnsScope {
 public:
  // Enters /run/netns/`name`. NOT_FOUND when there is no such namespace;
  // PERMISSION_DENIED when setns(2) is refused (not root); INTERNAL for
  // other failures.
  static absl::StatusOr<std::unique_ptr<NetnsScope>> Enter(const std::string& name);
  ~NetnsScope();  // Leave()s

  NetnsScope(const NetnsScope&) = delete;
  NetnsScope& operator=(const NetnsScope&) = delete;

  // Back to the namespace the thread was in. INTERNAL when setns fails.
  // Idempotent.
  absl::Status Leave();

 private:
  NetnsScope() = default;
  int original_fd_ = -1;  // the thread's namespace before Enter
};

}  // namespace krul::loadtest

#endif  // KRUL_LOADTEST_CLUSTER_NETNS_SCOPE_H_
