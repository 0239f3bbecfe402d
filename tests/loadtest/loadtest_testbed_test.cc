// krul-loadtest on the disaggregated testbed (--local_cluster_net=testbed):
// deploy/local/testbed.sh makes a storage and a compute network namespace
// joined by a tc-shaped veth; the kvstore runs on the storage node, the
// workers and the HTTP client on the compute node. Checked: summary.json
// names the link that was made (rate as asked, both namespaces, the kvstore
// scraped at its storage-node address), every request is accounted for, and
// no namespace of the run is left, after a clean run, after a Ctrl-C in the
// middle of a run, and after krul-loadtest is killed with SIGKILL (its
// watchdog takes the testbed down). Skipped where namespaces cannot be made
// (not root, no iproute2): `testbed.sh check` says why.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "test_support/shell.h"
#include "test_support/test_data.h"
#include "test_support/wait.h"

namespace krul::loadtest {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Three conversations, six user turns, in the ShareGPT shape.
constexpr char kConversations[] = R"([
  {"id": "dog", "conversations": [
    {"from": "human", "value": "Tell me a story about a little dog named Max."},
    {"from": "human", "value": "What did Max do with the ball?"},
    {"from": "human", "value": "How did the story end?"}]},
  {"id": "stone", "conversations": [
    {"from": "human", "value": "Write a story about a girl who finds a shiny stone."},
    {"from": "human", "value": "What did she do next?"}]},
  {"id": "cat", "conversations": [
    {"from": "human", "value": "Tell me about a cat and a bird in the garden."}]}
])";
constexpr int kTurns = 6;

// stdout + stderr of a shell command, and its exit code.
std::pair<int, std::string> Shell(const std::string& command) {
  const testing::ShellResult r = testing::RunShell(command);
  return {r.exit_code, r.output};
}

// Whether `ip netns list` names a namespace that starts with `prefix`.
bool NamespaceListed(const std::string& prefix) {
  const auto [code, output] = Shell("ip netns list");
  if (code != 0) return true;  // cannot tell: treat as still there
  return std::regex_search(output, std::regex("(^|\n)" + prefix + "[^ \n]* ?"));
}

class LoadtestTestbedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto [code, output] = Shell(std::string(KRUL_TESTBED_SCRIPT) + " check");
    if (code != 0) {
      GTEST_SKIP() << "no testbed here (network namespaces need root and iproute2): " << output;
    }
    dir_ = krul::testing::ScratchDir();
    trace_ = dir_ + "/conversations.json";
    krul::testing::WriteFileOrDie(trace_, kConversations);
    out_ = dir_ + "/out";
    log_ = dir_ + "/loadtest.log";
  }

  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  // Starts krul-loadtest on the testbed with `extra` flags, output to log_.
  void Start(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {KRUL_LOADTEST_BIN,
                                     "--trace",
                                     trace_,
                                     "--local_cluster",
                                     "1",
                                     "--local_cluster_net",
                                     "testbed",
                                     "--link_gbit_per_s",
                                     "0.25",
                                     "--out",
                                     out_,
                                     "--output_tokens",
                                     "8",
                                     "--progress",
                                     "lines",
                                     "--plots=false",
                                     "--settle_s",
                                     "3",
                                     "--worker_args",
                                     "--probe_compute=false --probe_load=false"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      execv(args[0], args.data());
      _exit(127);
    }
  }

  // The exit code once krul-loadtest ends within `timeout`, else -1.
  int Wait(absl::Duration timeout) {
    int status = 0;
    bool exited = false;
    krul::testing::WaitFor(
        [&] {
          exited = waitpid(pid_, &status, WNOHANG) == pid_;
          return exited;
        },
        timeout, "krul-loadtest to exit", absl::Milliseconds(50));
    if (!exited) return -1;
    pid_ = -1;
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::string Log() const { return krul::testing::ReadFileOrDie(log_); }

  // The testbed's name once krul-loadtest has printed "testbed NAME up",
  // and the line `marker` after it.
  std::string WaitForTestbed(const std::string& marker) {
    std::string name;
    EXPECT_TRUE(krul::testing::WaitFor(
        [&] {
          std::smatch m;
          const std::string log = fs::exists(log_) ? Log() : std::string();
          if (std::regex_search(log, m, std::regex("testbed (krultb[a-z0-9]*) up")) &&
              log.find(marker) != std::string::npos) {
            name = m[1].str();
          }
          return !name.empty();
        },
        absl::Seconds(30), "the testbed and '" + marker + "'", absl::Milliseconds(20)))
        << (fs::exists(log_) ? Log() : std::string("(no log)"));
    return name;
  }

  std::string dir_, trace_, out_, log_;
  pid_t pid_ = -1;
};

TEST_F(LoadtestTestbedTest, RunsAcrossTheShapedLinkAndRemovesIt) {
  Start({"--concurrency", "2"});
  const int rc = Wait(absl::Seconds(60));
  const std::string output = Log();
  ASSERT_EQ(rc, 0) << output;

  const json summary = json::parse(krul::testing::ReadFileOrDie(out_ + "/summary.json"));
  const json& link = summary["run"]["link"];
  EXPECT_EQ(link["net"], "testbed") << link.dump();
  // The rate the script applied (KRUL_TB_RATE_BITS), as asked.
  EXPECT_DOUBLE_EQ(link["gbit_per_s"].get<double>(), 0.25) << link.dump();
  EXPECT_EQ(link["rate"], "250000kbit");
  const std::string name = link["testbed"].get<std::string>();
  ASSERT_TRUE(std::regex_match(name, std::regex("krultb[a-z0-9]+"))) << name;
  EXPECT_EQ(link["storage_ns"], name + "-storage");
  EXPECT_EQ(link["compute_ns"], name + "-compute");
  EXPECT_NE(link["storage_addr"], link["compute_addr"]);
  EXPECT_EQ(link["kv_transport"], "ucx-tcp");

  const json& requests = summary["requests"];
  EXPECT_EQ(requests["planned"], kTurns);
  EXPECT_EQ(requests["sent"].get<int>() + requests["not_sent"]["total"].get<int>(), kTurns);
  EXPECT_TRUE(requests["accounted"].get<bool>());
  EXPECT_EQ(requests["ok"], kTurns) << summary["all"]["errors"].dump() << "\n" << output;

  // The workers answered on the compute node's loopback; the kvstore was
  // scraped at its storage-node address, across the link.
  bool kvstore_scraped = false;
  for (const json& t : summary["metrics"]["targets"]) {
    if (t["role"] == "kvstore") {
      kvstore_scraped = true;
      EXPECT_EQ(t["address"].get<std::string>().rfind(link["storage_addr"].get<std::string>(), 0),
                0u)
          << t.dump();
    } else {
      EXPECT_EQ(t["address"].get<std::string>().rfind("127.0.0.1:", 0), 0u) << t.dump();
    }
  }
  EXPECT_TRUE(kvstore_scraped) << summary["metrics"].dump();
  EXPECT_TRUE(summary["metrics"]["kvstore"]["complete"].get<bool>());

  EXPECT_NE(output.find("local cluster stopped"), std::string::npos) << output;
  EXPECT_NE(output.find("testbed " + name + " removed"), std::string::npos) << output;
  EXPECT_FALSE(NamespaceListed(name + "-")) << Shell("ip netns list").second;
}

TEST_F(LoadtestTestbedTest, CtrlCInTheMiddleOfARunRemovesTheTestbed) {
  // A long think time keeps the run going until the interrupt.
  Start({"--concurrency", "1", "--think_time_s", "30"});
  const std::string name = WaitForTestbed("run default");
  ASSERT_FALSE(name.empty());
  ASSERT_TRUE(NamespaceListed(name + "-"));
  kill(pid_, SIGINT);
  const int rc = Wait(absl::Seconds(45));
  const std::string output = Log();
  EXPECT_EQ(rc, 130) << output;  // interrupted; partial report written
  EXPECT_TRUE(fs::exists(out_ + "/summary.json")) << output;
  EXPECT_NE(output.find("testbed " + name + " removed"), std::string::npos) << output;
  EXPECT_FALSE(NamespaceListed(name + "-")) << Shell("ip netns list").second;
}

TEST_F(LoadtestTestbedTest, TheWatchdogRemovesTheTestbedAfterSigkill) {
  Start({"--concurrency", "1", "--think_time_s", "30"});
  const std::string name = WaitForTestbed("run default");
  ASSERT_FALSE(name.empty());
  ASSERT_TRUE(NamespaceListed(name + "-"));
  kill(pid_, SIGKILL);
  EXPECT_EQ(Wait(absl::Seconds(10)), 128 + SIGKILL);
  EXPECT_TRUE(krul::testing::WaitFor([&] { return !NamespaceListed(name + "-"); },
                                     absl::Seconds(30), "the watchdog to remove " + name,
                                     absl::Milliseconds(50)))
      << Shell("ip netns list").second;
}

}  // namespace
}  // namespace krul::loadtest
