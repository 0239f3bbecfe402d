#include "storage/ucx_perftest.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace krul::bench {
namespace {

// A port that was free a moment ago (the usual race is harmless: the server
// then fails to bind and the run reports UNAVAILABLE).
absl::StatusOr<int> FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return absl::InternalError("bind an ephemeral port");
  }
  close(fd);
  return ntohs(addr.sin_port);
}

// Whether some socket listens on TCP `port` (IPv4 or IPv6), from
// /proc/net/tcp{,6}: "sl local_address rem_address st ...", st 0A = LISTEN.
bool Listening(int port) {
  char suffix[8];
  std::snprintf(suffix, sizeof(suffix), ":%04X", port);
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string sl, local, remote, state;
      fields >> sl >> local >> remote >> state;
      if (state == "0A" && local.size() > 5 && local.compare(local.size() - 5, 5, suffix) == 0) {
        return true;
      }
    }
  }
  return false;
}

bool Executable(const std::string& binary) {
  if (binary.find('/') != std::string::npos) return access(binary.c_str(), X_OK) == 0;
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  for (absl::string_view dir : absl::StrSplit(path, ':')) {
    if (!dir.empty() && access(absl::StrCat(dir, "/", binary).c_str(), X_OK) == 0) return true;
  }
  return false;
}

// A child whose stdout and stderr go to `out` (read end, ours).
struct Child {
  pid_t pid = -1;
  int out = -1;
  std::string output;
  bool exited = false;
  int status = 0;

  ~Child() {
    if (pid > 0 && !exited) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (out >= 0) close(out);
  }

  // Reads what is available within `wait`; false at end of output.
  bool Read(absl::Duration wait) {
    pollfd p{out, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(wait))) <= 0) return true;
    char buf[4096];
    ssize_t n = read(out, buf, sizeof(buf));
    if (n <= 0) return false;
    output.append(buf, static_cast<size_t>(n));
    return true;
  }

  // Reads to the end of output and reaps, by `deadline`; false if it did not
  // finish by then (it is killed).
  bool Finish(absl::Time deadline) {
    while (absl::Now() < deadline) {
      if (!Read(std::min(deadline - absl::Now(), absl::Milliseconds(100)))) break;
    }
    if (absl::Now() >= deadline) return false;
    waitpid(pid, &status, 0);
    exited = true;
    return true;
  }

  bool Alive() {
    if (exited) return false;
    if (waitpid(pid, &status, WNOHANG) == pid) exited = true;
    return !exited;
  }
};

absl::Status Spawn(const std::string& binary, const std::vector<std::string>& args,
                   const std::vector<std::pair<std::string, std::string>>& env, Child* child) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError("pipe");
  std::vector<std::string> a = {binary};
  a.insert(a.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : a) argv.push_back(s.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return absl::InternalError("fork");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  close(fds[1]);
  child->pid = pid;
  child->out = fds[0];
  return absl::OkStatus();
}

std::string Tail(const std::string& s) { return s.size() > 600 ? s.substr(s.size() - 600) : s; }

}  // namespace

absl::StatusOr<UcxPerftestResult> ParseUcxPerftestOutput(const std::string& output) {
  for (absl::string_view line : absl::StrSplit(output, '\n')) {
    const size_t at = line.find("Final:");
    if (at == absl::string_view::npos) continue;
    // iterations, latency 50%ile / average / overall (us), bandwidth
    // average / overall (MB/s, MB = 2^20 bytes), message rate average /
    // overall.
    std::vector<absl::string_view> fields =
        absl::StrSplit(line.substr(at + 6), ' ', absl::SkipWhitespace());
    double latency = 0, bandwidth = 0;
    if (fields.size() < 6 || !absl::SimpleAtod(fields[3], &latency) ||
        !absl::SimpleAtod(fields[5], &bandwidth)) {
      return absl::InternalError(absl::StrCat("ucx_perftest: cannot parse '", line, "'"));
    }
    return UcxPerftestResult{bandwidth * 1048576.0 / 1e9, latency, std::string(line)};
  }
  return absl::InternalError(absl::StrCat("ucx_perftest printed no Final: line: ", Tail(output)));
}

absl::StatusOr<UcxPerftestResult> RunUcxPerftest(const UcxPerftestRun& run) {
  if (!Executable(run.binary)) {
    return absl::NotFoundError(absl::StrCat(run.binary, " not found (Debian package ucx-utils)"));
  }
  const absl::Time deadline = absl::Now() + run.timeout;
  absl::StatusOr<int> port = FreeLoopbackPort();
  if (!port.ok()) return port.status();
  const std::string port_arg = absl::StrCat(*port);
  Child server;
  if (absl::Status s = Spawn(run.binary, {"-p", port_arg}, run.env, &server); !s.ok()) return s;
  while (!Listening(*port)) {
    if (!server.Alive() || absl::Now() >= deadline) {
      server.Finish(absl::Now() + absl::Seconds(1));
      return absl::UnavailableError(absl::StrCat("ucx_perftest server did not listen on port ",
                                                 *port, ": ", Tail(server.output)));
    }
    server.Read(absl::Milliseconds(5));  // Also keeps its pipe drained.
  }
  Child client;
  if (absl::Status s =
          Spawn(run.binary,
                {"127.0.0.1", "-p", port_arg, "-t", run.test, "-s", absl::StrCat(run.message_bytes),
                 "-n", absl::StrCat(run.iterations), "-w", absl::StrCat(run.warmup_iterations)},
                run.env, &client);
      !s.ok()) {
    return s;
  }
  if (!client.Finish(deadline)) {
    return absl::UnavailableError(absl::StrCat("ucx_perftest ", run.test, " ", run.message_bytes,
                                               " B did not finish within ",
                                               absl::FormatDuration(run.timeout)));
  }
  server.Finish(std::min(deadline, absl::Now() + absl::Seconds(5)));
  if (!WIFEXITED(client.status) || WEXITSTATUS(client.status) != 0) {
    return absl::InternalError(absl::StrCat("ucx_perftest client failed: ", Tail(client.output)));
  }
  return ParseUcxPerftestOutput(client.output);
}

}  // namespace krul::bench
