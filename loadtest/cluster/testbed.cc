#include "cluster/testbed.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <filesystem>
#include <map>
#include <regex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cluster/command.h"

namespace krul::loadtest {
namespace {

// The last non-empty line of `text`, without the "testbed: " prefix.
std::string LastLine(const std::string& text) {
  std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipWhitespace());
  if (lines.empty()) return "(no message)";
  return std::string(absl::StripPrefix(lines.back(), "testbed: "));
}

std::string ReadTail(const std::string& path, size_t bytes) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return "";
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  const off_t from = size > bytes ? static_cast<off_t>(size - bytes) : 0;
  std::string text(size - from, '\0');
  const ssize_t n = pread(fd, text.data(), text.size(), from);
  close(fd);
  text.resize(n > 0 ? n : 0);
  return text;
}

bool NamespaceListed(const std::string& ns) {
  std::error_code ec;
  return std::filesystem::exists(std::filesystem::path("/run/netns") / ns, ec);
}

}  // namespace

absl::Status Testbed::Check(const std::string& script) {
  if (access(script.c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat(script, " not found or not executable"));
  }
  auto r = RunCommand({script, "check"}, "", absl::Seconds(30));
  if (!r.ok()) return r.status();
  if (r->code != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no testbed here: ", r->timed_out ? "'testbed.sh check' timed out" : LastLine(r->output)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Testbed>> Testbed::Up(const TestbedOptions& options) {
  std::unique_ptr<Testbed> tb(new Testbed());
  tb->options_ = options;
  TestbedOptions& o = tb->options_;
  if (o.name.empty()) o.name = absl::StrFormat("krultb%x", getpid() & 0xffffff);
  if (!std::regex_match(o.name, std::regex("krultb[a-z0-9]{0,6}"))) {
    return absl::InvalidArgumentError(
        absl::StrCat("testbed name '", o.name, "' must be krultb plus up to 6 [a-z0-9]"));
  }
  if (!(o.rate_gbit_per_s >= 1e-6)) {
    return absl::InvalidArgumentError("the link rate must be at least 1 kbit/s");
  }
  if (!(o.delay_ms >= 0)) return absl::InvalidArgumentError("the link delay must be >= 0 ms");
  if (absl::Status s = Check(o.script); !s.ok()) return s;

  // tc takes integer kbit exactly (a gbit figure like 0.25 would print as
  // "0.25gbit", which tc reads too, but kbit keeps every rate integral).
  const std::string rate = absl::StrFormat("%.0fkbit", std::round(o.rate_gbit_per_s * 1e6));
  auto up = RunCommand({o.script, "up", "--name", o.name, "--rate", rate, "--delay_ms",
                        absl::StrFormat("%g", o.delay_ms)},
                       o.log_path, o.timeout);
  if (!up.ok()) return up.status();
  std::map<std::string, std::string> env;
  for (absl::string_view line : absl::StrSplit(up->output, '\n', absl::SkipWhitespace())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (absl::StartsWith(kv.first, "KRUL_TB_")) env[kv.first] = kv.second;
  }
  if (up->code != 0 || env.count("KRUL_TB_COMPUTE_NS") == 0) {
    // `up` removes what it made when it fails; a timeout may not have let it.
    (void)RunCommand({o.script, "down", "--name", o.name}, o.log_path, o.timeout);
    return absl::UnavailableError(
        absl::StrCat("deploy/local/testbed.sh up ", up->timed_out ? "timed out" : "failed",
                     "; its messages (", o.log_path, "):\n", ReadTail(o.log_path, 2000)));
  }
  TestbedLink& l = tb->link_;
  l.name = env["KRUL_TB_NAME"];
  l.storage_ns = env["KRUL_TB_STORAGE_NS"];
  l.compute_ns = env["KRUL_TB_COMPUTE_NS"];
  l.storage_addr = env["KRUL_TB_STORAGE_ADDR"];
  l.compute_addr = env["KRUL_TB_COMPUTE_ADDR"];
  l.storage_dev = env["KRUL_TB_STORAGE_DEV"];
  l.compute_dev = env["KRUL_TB_COMPUTE_DEV"];
  l.rate = env["KRUL_TB_RATE"];
  (void)absl::SimpleAtod(env["KRUL_TB_RATE_BITS"], &l.rate_bits_per_s);
  (void)absl::SimpleAtod(env["KRUL_TB_BURST_BYTES"], &l.burst_bytes);
  (void)absl::SimpleAtod(env["KRUL_TB_DELAY_MS"], &l.delay_ms);
  (void)absl::SimpleAtod(env["KRUL_TB_DELAY_REQUESTED_MS"], &l.delay_requested_ms);
  l.netem = env["KRUL_TB_NETEM"] == "1";

  // The watchdog: `down` once the pipe's write end (held by this process
  // only: close-on-exec) closes, however this process ends.
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    (void)tb->Down();
    return absl::InternalError("pipe failed");
  }
  const int log_fd = open(o.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const std::string program = "cat >/dev/null; exec \"$0\" down --name \"$1\"";
  const pid_t pid = fork();
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0);
    dup2(fds[0], STDIN_FILENO);
    const int null_fd = open("/dev/null", O_WRONLY);
    dup2(log_fd >= 0 ? log_fd : null_fd, STDOUT_FILENO);
    dup2(log_fd >= 0 ? log_fd : null_fd, STDERR_FILENO);
    execl("/bin/sh", "sh", "-c", program.c_str(), o.script.c_str(), o.name.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[0]);
  if (log_fd >= 0) close(log_fd);
  if (pid < 0) {
    close(fds[1]);
    (void)tb->Down();
    return absl::InternalError("fork failed");
  }
  tb->watchdog_pid_ = pid;
  tb->watchdog_fd_ = fds[1];
  return tb;
}

Testbed::~Testbed() { (void)Down(); }

std::vector<std::string> Testbed::StoragePrefix() const {
  return {"ip",
          "netns",
          "exec",
          link_.storage_ns,
          "env",
          "UCX_TLS=tcp",
          absl::StrCat("UCX_NET_DEVICES=", link_.storage_dev)};
}

std::vector<std::string> Testbed::ComputePrefix() const {
  return {"ip",
          "netns",
          "exec",
          link_.compute_ns,
          "env",
          "UCX_TLS=tcp",
          absl::StrCat("UCX_NET_DEVICES=", link_.compute_dev)};
}

absl::Status Testbed::Down() {
  if (down_) return absl::OkStatus();
  down_ = true;
  auto r = RunCommand({options_.script, "down", "--name", options_.name}, options_.log_path,
                      options_.timeout);
  // The watchdog's own `down` finds nothing left; it is waited for briefly.
  if (watchdog_fd_ >= 0) close(watchdog_fd_);
  watchdog_fd_ = -1;
  if (watchdog_pid_ > 0) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    int status = 0;
    while (waitpid(watchdog_pid_, &status, WNOHANG) == 0) {
      if (absl::Now() >= deadline) {
        kill(-watchdog_pid_, SIGKILL);
        waitpid(watchdog_pid_, &status, 0);
        break;
      }
      // A child's exit cannot be awaited with a timeout portably; poll.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    watchdog_pid_ = -1;
  }
  if (!r.ok()) return r.status();
  if (r->code != 0) {
    return absl::InternalError(absl::StrCat("deploy/local/testbed.sh down --name ", options_.name,
                                            r->timed_out ? " timed out" : " failed", " (",
                                            options_.log_path, ")"));
  }
  for (const std::string& ns : {link_.storage_ns, link_.compute_ns}) {
    if (!ns.empty() && NamespaceListed(ns)) {
      return absl::InternalError(absl::StrCat("network namespace ", ns,
                                              " is still there after "
                                              "deploy/local/testbed.sh down"));
    }
  }
  return absl::OkStatus();
}

}  // namespace krul::loadtest
