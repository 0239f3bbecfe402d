#include "cluster/local_cluster.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace krul::loadtest {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string Tail(const std::string& text, size_t lines) {
  size_t pos = text.size();
  for (size_t n = 0; n <= lines && pos > 0; ++n) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
  }
  return text.substr(pos + 1);
}

// The number after `key` in `line` ("... listening on 127.0.0.1:PORT",
// "metrics_port 9464"), or -1.
int NumberAfter(const std::string& line, const std::regex& pattern) {
  std::smatch m;
  int value = -1;
  if (std::regex_search(line, m, pattern) && absl::SimpleAtoi(m[1].str(), &value)) return value;
  return -1;
}

// Exit status of `pid` once it exits within `timeout` (-1: killed by a
// signal; -2: still running).
int WaitExit(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    if (r < 0 && errno != EINTR) return -1;
    if (absl::Now() >= deadline) return -2;
    // A child exit cannot be waited on with a timeout portably; poll.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

std::string SelfBinDir() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : self.parent_path().string();
}

absl::StatusOr<LocalCluster::Process> LocalCluster::Spawn(const std::string& name,
                                                          const std::vector<std::string>& prefix,
                                                          const std::vector<std::string>& argv) {
  if (access(argv[0].c_str(), X_OK) != 0) {
    return absl::NotFoundError(absl::StrCat(argv[0],
                                            " not found or not executable (build it, or "
                                            "point --bin_dir at it)"));
  }
  Process p;
  p.name = name;
  p.log = (fs::path(options_.log_dir) / (name + ".log")).string();
  const int fd = open(p.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot create ", p.log));
  std::vector<char*> args;
  for (const std::string& a : prefix) args.push_back(const_cast<char*>(a.c_str()));
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fd);
    return absl::InternalError("fork failed");
  }
  if (pid == 0) {
    // Child: own process group, dies with the parent, output to the log.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);  // the mask survives exec
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);  // the parent died before prctl
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execvp(args[0], args.data());  // a prefix names "ip" by PATH
    _exit(127);
  }
  close(fd);
  p.pid = pid;
  processes_.push_back(p);
  return p;
}

absl::StatusOr<std::string> LocalCluster::WaitForLine(const Process& p, const std::string& marker,
                                                      absl::Time deadline) {
  while (true) {
    const std::string text = ReadFile(p.log);
    if (size_t at = text.find(marker); at != std::string::npos) {
      const size_t begin = text.rfind('\n', at);
      const size_t end = text.find('\n', at);
      if (end != std::string::npos) {  // the whole line is there
        return text.substr(begin == std::string::npos ? 0 : begin + 1,
                           end - (begin == std::string::npos ? 0 : begin + 1));
      }
    }
    int status = 0;
    if (waitpid(p.pid, &status, WNOHANG) == p.pid) {
      for (Process& q : processes_) {
        if (q.pid == p.pid) q.pid = -1;  // reaped
      }
      return absl::UnavailableError(absl::StrCat(p.name,
                                                 " exited before it was ready; the end "
                                                 "of ",
                                                 p.log, ":\n", Tail(text, 15)));
    }
    if (options_.cancel != nullptr && options_.cancel->load()) {
      return absl::CancelledError(absl::StrCat("interrupted while waiting for ", p.name));
    }
    if (absl::Now() >= deadline) {
      return absl::UnavailableError(absl::StrCat(p.name, " printed no '", marker,
                                                 "' in time; the "
                                                 "end of ",
                                                 p.log, ":\n", Tail(text, 15)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(
    const LocalClusterOptions& options) {
  std::unique_ptr<LocalCluster> c(new LocalCluster());
  c->options_ = options;
  std::error_code ec;
  fs::create_directories(options.log_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", options.log_dir));
  c->db_dir_ = (fs::path(options.log_dir) / "kvstore-db").string();
  fs::remove_all(c->db_dir_, ec);
  const absl::Time deadline = absl::Now() + options.start_timeout;

  const std::string kvstore_bin = (fs::path(options.bin_dir) / "krul-kvstore").string();
  std::vector<std::string> kv_argv = {
      kvstore_bin,      "--host", options.kvstore_host, "--port",  "0",
      "--metrics_port", "0",      "--rocksdb_path",     c->db_dir_};
  kv_argv.insert(kv_argv.end(), options.extra_kvstore_args.begin(),
                 options.extra_kvstore_args.end());
  auto kv = c->Spawn("kvstore", options.kvstore_prefix, kv_argv);
  if (!kv.ok()) return kv.status();
  auto kv_line = c->WaitForLine(*kv, "listening on", deadline);
  if (!kv_line.ok()) return kv_line.status();
  const int kv_port = NumberAfter(*kv_line, std::regex(R"(listening on [^ ]*:(\d+))"));
  const int metrics_port = NumberAfter(*kv_line, std::regex(R"(metrics_port (\d+))"));
  if (kv_port <= 0) {
    return absl::UnavailableError(absl::StrCat("no port in the kvstore's line: ", *kv_line));
  }
  c->kvstore_ = {options.kvstore_host, kv_port};
  c->kvstore_metrics_ = {options.kvstore_host, metrics_port};

  const std::string worker_bin = (fs::path(options.bin_dir) / "krul-worker").string();
  std::vector<Process> workers;
  for (int w = 1; w <= options.workers; ++w) {
    std::vector<std::string> argv = {worker_bin};
    argv.insert(argv.end(), options.model_args.begin(), options.model_args.end());
    for (const std::string& a :
         {std::string("--host"), std::string("127.0.0.1"), std::string("--http_port"),
          std::string("0"), std::string("--threads"), std::string("1"), std::string("--kvstore"),
          c->kvstore_.Name()}) {
      argv.push_back(a);
    }
    argv.insert(argv.end(), options.extra_worker_args.begin(), options.extra_worker_args.end());
    auto p = c->Spawn(absl::StrCat("worker", w), options.worker_prefix, argv);
    if (!p.ok()) return p.status();
    workers.push_back(*p);
  }
  for (const Process& p : workers) {
    auto line = c->WaitForLine(p, "krul-worker listening on", deadline);
    if (!line.ok()) return line.status();
    const int port = NumberAfter(*line, std::regex(R"(listening on [^ ]*:(\d+))"));
    if (port <= 0) return absl::UnavailableError(absl::StrCat("no port in: ", *line));
    c->workers_.push_back({"127.0.0.1", port});
  }
  return c;
}

LocalCluster::~LocalCluster() { (void)Stop(); }

absl::Status LocalCluster::Stop() {
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  std::vector<std::string> unclean;
  // Workers first (they persist to the kvstore while draining), then the kvstore.
  for (auto it = processes_.rbegin(); it != processes_.rend(); ++it) {
    Process& p = *it;
    if (p.pid <= 0) continue;
    kill(p.pid, SIGTERM);
    int code = WaitExit(p.pid, absl::Seconds(30));
    if (code == -2) {
      kill(p.pid, SIGKILL);
      code = WaitExit(p.pid, absl::Seconds(5));
      unclean.push_back(absl::StrCat(p.name, " (killed after 30 s)"));
    } else if (code != 0) {
      unclean.push_back(absl::StrCat(p.name, " (exit ", code, ")"));
    }
    p.pid = -1;
  }
  std::error_code ec;
  fs::remove_all(db_dir_, ec);
  if (!unclean.empty()) {
    return absl::InternalError(absl::StrCat("did not stop cleanly: ", absl::StrJoin(unclean, ", "),
                                            "; logs in ", options_.log_dir));
  }
  return absl::OkStatus();
}

}  // namespace krul::loadtest
