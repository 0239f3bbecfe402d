#include "cluster/netns_scope.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace krul::loadtest {

absl::StatusOr<std::unique_ptr<NetnsScope>> NetnsScope::Enter(const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("bad network namespace name '", name, "'"));
  }
  const std::string path = absl::StrCat("/run/netns/", name);
  const int target = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (target < 0) {
    return absl::NotFoundError(
        absl::StrCat("no network namespace ", name, " (", path, ": ", std::strerror(errno), ")"));
  }
  std::unique_ptr<NetnsScope> scope(new NetnsScope());
  scope->original_fd_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (scope->original_fd_ < 0) {
    close(target);
    return absl::InternalError(
        absl::StrCat("cannot open this thread's network namespace: ", std::strerror(errno)));
  }
  if (setns(target, CLONE_NEWNET) != 0) {
    const int error = errno;
    close(target);
    const std::string message =
        absl::StrCat("cannot enter network namespace ", name, ": ", std::strerror(error));
    return error == EPERM ? absl::PermissionDeniedError(message) : absl::InternalError(message);
  }
  close(target);
  return scope;
}

NetnsScope::~NetnsScope() { (void)Leave(); }

absl::Status NetnsScope::Leave() {
  if (original_fd_ < 0) return absl::OkStatus();
  const int fd = original_fd_;
  original_fd_ = -1;
  const int rc = setns(fd, CLONE_NEWNET);
  const int error = errno;
  close(fd);
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("cannot return to the original network namespace: ", std::strerror(error)));
  }
  return absl::OkStatus();
}

}  // namespace krul::loadtest
