// krul-loadtest end to end: `--local_cluster 2` starts a kvstore and two
// workers (built beside it) on loopback, replays a short multi-turn
// conversation file, stops them, and leaves summary.json, requests.csv and
// the PNG plots. Checked: every request accounted for, TTFT > 0 on every
// answer, p50 <= p90 <= p99, both workers used.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "test_support/test_data.h"
#include "test_support/wait.h"

namespace krul::loadtest {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Four conversations, nine user turns, in the ShareGPT shape.
constexpr char kConversations[] = R"([
  {"id": "dog", "conversations": [
    {"from": "human", "value": "Tell me a story about a little dog named Max."},
    {"from": "gpt", "value": "Max was a happy dog."},
    {"from": "human", "value": "What did Max do with the ball?"},
    {"from": "human", "value": "How did the story end?"}]},
  {"id": "stone", "conversations": [
    {"from": "human", "value": "Write a story about a girl who finds a shiny stone."},
    {"from": "human", "value": "What did she do next?"}]},
  {"id": "cat", "conversations": [
    {"from": "human", "value": "Tell me about a cat and a bird in the garden."},
    {"from": "human", "value": "Were they friends?"}]},
  {"id": "truck", "conversations": [
    {"from": "human", "value": "Once upon a time there was a big red truck."},
    {"from": "human", "value": "Where did the truck go?"}]}
])";
constexpr int kTurns = 9;

// Runs argv with stdout+stderr to `log`; the exit code, or -1 when it did
// not end within `timeout` (it is killed then).
int RunProcess(const std::vector<std::string>& argv, const std::string& log,
               absl::Duration timeout) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execv(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  bool exited = false;
  krul::testing::WaitFor(
      [&] {
        exited = waitpid(pid, &status, WNOHANG) == pid;
        return exited;
      },
      timeout, "krul-loadtest to exit", absl::Milliseconds(50));
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool IsPng(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[8] = {};
  in.read(magic, 8);
  return in && std::string(magic, 8) == "\x89PNG\r\n\x1a\n" && fs::file_size(path) > 1000;
}

void ExpectOrdered(const json& dist, const std::string& name) {
  SCOPED_TRACE(name);
  EXPECT_LE(dist["p50"].get<double>(), dist["p90"].get<double>());
  EXPECT_LE(dist["p90"].get<double>(), dist["p99"].get<double>());
}

TEST(LoadtestIntegrationTest, LocalClusterReplaysAConversationFile) {
  const std::string dir = krul::testing::ScratchDir();
  const std::string trace = dir + "/conversations.json";
  krul::testing::WriteFileOrDie(trace, kConversations);
  const std::string out = dir + "/out";
  const std::string log = dir + "/loadtest.log";
  // A small synthetic model keeps the run short; the start-up probes are
  // skipped for the same reason (they calibrate costs, not answers).
  const int rc = RunProcess({KRUL_LOADTEST_BIN, "--trace", trace, "--local_cluster", "2", "--out",
                             out, "--concurrency", "2", "--output_tokens", "8", "--progress",
                             "lines", "--worker_args", "--probe_compute=false --probe_load=false"},
                            log, absl::Seconds(120));
  const std::string output = krul::testing::ReadFileOrDie(log);
  ASSERT_EQ(rc, 0) << output;

  for (const char* name : {"summary.json", "requests.csv"}) {
    EXPECT_TRUE(fs::exists(fs::path(out) / name)) << name;
  }
  for (const char* name :
       {"ttft_cdf.png", "ttft_over_time.png", "ttft_vs_history.png", "throughput_over_time.png"}) {
    EXPECT_TRUE(IsPng(fs::path(out) / name)) << name << "\n" << output;
  }

  const json summary = json::parse(krul::testing::ReadFileOrDie(out + "/summary.json"));
  const json& requests = summary["requests"];
  EXPECT_EQ(requests["planned"], kTurns);
  EXPECT_EQ(requests["sent"].get<int>() + requests["not_sent"]["total"].get<int>(), kTurns);
  EXPECT_TRUE(requests["accounted"].get<bool>());
  EXPECT_EQ(requests["sent"], kTurns) << output;
  EXPECT_EQ(requests["ok"], kTurns) << summary["all"]["errors"].dump();

  // requests.csv: a header and one row per request sent, each with TTFT > 0.
  std::vector<std::string> lines =
      absl::StrSplit(krul::testing::ReadFileOrDie(out + "/requests.csv"), '\n', absl::SkipEmpty());
  ASSERT_EQ(static_cast<int>(lines.size()), requests["sent"].get<int>() + 1);
  const std::vector<std::string> header = absl::StrSplit(lines[0], ',');
  const size_t ttft_column = std::find(header.begin(), header.end(), "ttft_ms") - header.begin();
  ASSERT_LT(ttft_column, header.size());
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::vector<std::string> cells = absl::StrSplit(lines[i], ',');
    ASSERT_GT(cells.size(), ttft_column) << lines[i];
    EXPECT_GT(std::stod(cells[ttft_column]), 0) << lines[i];
  }

  const json& all = summary["all"];
  EXPECT_GT(all["ttft_ms"]["p50"].get<double>(), 0);
  ExpectOrdered(all["ttft_ms"], "ttft");
  ExpectOrdered(all["e2e_ms"], "e2e");
  ExpectOrdered(all["tpot_ms"], "tpot");
  EXPECT_LE(all["ttft_ms"]["p99"].get<double>(), all["e2e_ms"]["p99"].get<double>());
  EXPECT_GT(all["throughput_rps"].get<double>(), 0);
  // Round robin over the two workers; both were scraped, and the kvstore.
  EXPECT_EQ(summary["by_endpoint"].size(), 2u);
  EXPECT_TRUE(summary["metrics"].contains("kvstore")) << summary["metrics"].dump();
  EXPECT_TRUE(summary["metrics"]["workers"]["complete"].get<bool>());
  // The cluster was stopped cleanly.
  EXPECT_NE(output.find("local cluster stopped"), std::string::npos) << output;
}

}  // namespace
}  // namespace krul::loadtest
