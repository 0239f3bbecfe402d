#include "kvstore_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

#ifndef KRUL_KVSTORE_BINARY
#error "KRUL_KVSTORE_BINARY must name the krul-kvstore executable"
#endif

namespace krul::testing {

absl::StatusOr<std::unique_ptr<KvStoreProcess>> KvStoreProcess::Start(
    const std::vector<std::string>& args, absl::Duration timeout) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe failed");
  std::vector<std::string> argv_s = {KRUL_KVSTORE_BINARY, "--host=127.0.0.1", "--port=0",
                                     "--metrics_port=-1"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(out[1], STDOUT_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  std::unique_ptr<KvStoreProcess> p(new KvStoreProcess());
  p->pid_ = pid;
  p->stdout_fd_ = out[0];
  // Libraries (UCX) may print warnings to stdout first: look for our line.
  static constexpr char kReady[] = "krul-kvstore listening on ";
  std::string text;
  std::string line;
  absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    size_t start = text.find(kReady);
    if (start != std::string::npos) {
      size_t end = text.find('\n', start);
      if (end != std::string::npos) {
        line = text.substr(start, end - start);
        break;
      }
    }
    int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
    if (ms <= 0) return absl::DeadlineExceededError("krul-kvstore did not report its port");
    pollfd pfd{p->stdout_fd_, POLLIN, 0};
    if (poll(&pfd, 1, ms) <= 0) continue;
    char buf[256];
    ssize_t n = read(p->stdout_fd_, buf, sizeof(buf));
    if (n <= 0) {
      int status = 0;
      waitpid(p->pid_, &status, 0);
      p->pid_ = -1;
      return absl::UnavailableError(
          absl::StrCat("krul-kvstore exited before listening (status ", status, "): ", text));
    }
    text.append(buf, static_cast<size_t>(n));
  }
  if (std::sscanf(line.c_str(), "krul-kvstore listening on 127.0.0.1:%d metrics_port %d", &p->port_,
                  &p->metrics_port_) != 2) {
    return absl::InternalError(absl::StrCat("unexpected first line: ", line));
  }
  return p;
}

KvStoreProcess::~KvStoreProcess() {
  Kill();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

void KvStoreProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

int KvStoreProcess::Terminate(absl::Duration timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  while (absl::Now() < deadline) {
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  Kill();
  return -1;
}

}  // namespace krul::testing
