#include "krul/base/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace krul {

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::vector<std::string>& argv, const std::string& ready_marker, absl::Duration timeout) {
  if (argv.empty()) return absl::InvalidArgumentError("argv is empty");
  // Build argv before fork: the child may only make async-signal-safe calls.
  std::vector<std::string> argv_copy = argv;
  std::vector<char*> args;
  for (std::string& a : argv_copy) args.push_back(a.data());
  args.push_back(nullptr);
  // O_CLOEXEC so that other children started later do not inherit this
  // pipe (dup2 clears the flag on the child's stdout).
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(fds[0]);
    close(fds[1]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(err)));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    dup2(fds[1], STDOUT_FILENO);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  std::unique_ptr<ChildProcess> child(new ChildProcess());
  child->pid_ = pid;
  child->stdout_fd_ = fds[0];
  absl::StatusOr<std::string> line = child->ReadLineUntil(ready_marker, absl::Now() + timeout);
  if (!line.ok()) {
    child->Kill();
    return line.status();
  }
  child->ready_line_ = *line;
  return child;
}

ChildProcess::~ChildProcess() {
  Kill();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

absl::StatusOr<std::string> ChildProcess::WaitForLine(const std::string& marker,
                                                      absl::Duration timeout) {
  return ReadLineUntil(marker, absl::Now() + timeout);
}

absl::StatusOr<std::string> ChildProcess::ReadLineUntil(const std::string& marker,
                                                        absl::Time deadline) {
  while (true) {
    size_t nl;
    while ((nl = buffer_.find('\n')) != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      lines_.push_back(line);
      if (line.find(marker) != std::string::npos) return line;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat("no line with '", marker, "' in time"));
    }
    pollfd p{stdout_fd_, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (r < 0 && errno != EINTR) return absl::InternalError("poll failed");
    if (r <= 0) continue;
    char buf[4096];
    const ssize_t n = read(stdout_fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // The output so far usually says why (libraries print to stdout too).
      return absl::FailedPreconditionError(
          absl::StrCat("the child exited before printing '", marker,
                       "'; its output: ", absl::StrJoin(lines_, "\n"), buffer_));
    }
    buffer_.append(buf, static_cast<size_t>(n));
  }
}

void ChildProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

int ChildProcess::Terminate(absl::Duration timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  const absl::Time deadline = absl::Now() + timeout;
  while (waitpid(pid_, &status, WNOHANG) != pid_) {
    if (absl::Now() >= deadline) {
      Kill();
      return -1;
    }
    absl::SleepFor(absl::Milliseconds(10));  // polling a child's exit: no fd to wait on
  }
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int PortFromLine(const std::string& line) {
  static const std::regex re(R"(listening on [^ ]*:(\d+))");
  std::smatch m;
  if (!std::regex_search(line, m, re)) return 0;
  return std::stoi(m[1].str());
}

}  // namespace krul
