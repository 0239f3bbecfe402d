// The monitoring stack against a live cluster: deploy/local/prometheus-cluster.sh starts two
// kvstore shards, two workers and a real Prometheus (scraping every second, the rules of
// deploy/prometheus loaded); two short replays of every restore mode plus a malformed request
// and a client reusing a conversation id with another history run through the workers. Then
// every Grafana panel query and every recording rule, evaluated through Prometheus' HTTP API,
// must return data, and every metric name in the dashboards and rules must be one the
// services export (read from their live /metrics). With Debian's chromium installed it also
// takes the screenshot of the TTFT-by-mode graph (deploy/local/prometheus-screenshot.sh).
// Skips with a message when prometheus or the binaries are missing.
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "deploy_test_util.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "promql_names.h"
#include "test_support/wait.h"

namespace krul::deploy_test {
namespace {

using ::krul::testing::WaitFor;
using ::krul::testing::WaitForOk;
using nlohmann::json;

std::string ClusterScript() { return SourceDir() + "/deploy/local/prometheus-cluster.sh"; }

// host:port -> a client with short timeouts (everything is on loopback).
std::unique_ptr<httplib::Client> Client(const std::string& hostport) {
  auto c = std::make_unique<httplib::Client>("http://" + hostport);
  c->set_connection_timeout(5);
  c->set_read_timeout(30);
  return c;
}

absl::StatusOr<std::string> Get(const std::string& hostport, const std::string& path) {
  auto res = Client(hostport)->Get(path);
  if (!res)
    return absl::UnavailableError(
        absl::StrCat("GET ", hostport, path, ": ", httplib::to_string(res.error())));
  if (res->status != 200)
    return absl::InternalError(absl::StrCat("GET ", path, ": HTTP ", res->status));
  return res->body;
}

// Sample lines of a /metrics page: "name{labels} value" -> (name, value), summed per name.
std::map<std::string, double> MetricSums(const std::string& page) {
  std::map<std::string, double> sums;
  for (absl::string_view line : absl::StrSplit(page, '\n', absl::SkipEmpty())) {
    if (absl::StartsWith(line, "#")) continue;
    const size_t name_end = line.find_first_of("{ ");
    const size_t value_at = line.rfind(' ');
    if (name_end == absl::string_view::npos || value_at == absl::string_view::npos) continue;
    double v = 0;
    if (!absl::SimpleAtod(line.substr(value_at + 1), &v)) continue;
    sums[std::string(line.substr(0, name_end))] += v;
  }
  return sums;
}

class LiveClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (FindTool("prometheus").empty()) {
      GTEST_SKIP()
          << "prometheus not found: scripts/install-deps.sh installs Debian's prometheus package";
    }
    for (const char* bin : {"krul-kvstore", "krul-worker", "krul-replay"}) {
      if (access((BinDir() + "/" + bin).c_str(), X_OK) != 0) GTEST_SKIP() << bin << " is not built";
    }
    tmp_ = std::make_unique<ScopedTempDir>("krul-live-cluster");
    ASSERT_FALSE(tmp_->path().empty());
    state_ = tmp_->path() + "/cluster";
    // 256 KiB of DRAM per shard: the replays overflow it, so evictions to RocksDB happen.
    // --watch-pid: the cluster goes away with this test process, even if it crashes.
    CommandResult r = RunCommand({"bash", ClusterScript(), "--state", state_, "--bin", BinDir(),
                                  "--kvstores", "2", "--workers", "2", "--dram-capacity", "256K",
                                  "--watch-pid", std::to_string(getpid()), "--ttl", "600"},
                                 "", absl::Seconds(120));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    started_ = true;
    for (absl::string_view line :
         absl::StrSplit(ReadFile(state_ + "/cluster.env"), '\n', absl::SkipEmpty())) {
      std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
      env_[kv.first] = kv.second;
    }
    prometheus_ = env_["KRUL_PROMETHEUS_URL"].substr(strlen("http://"));
    workers_ = absl::StrSplit(env_["KRUL_WORKERS"], ',');
    kvstore_metrics_ = absl::StrSplit(env_["KRUL_KVSTORE_METRICS"], ',');
    ASSERT_EQ(workers_.size(), 2u);
    ASSERT_EQ(kvstore_metrics_.size(), 2u);
  }

  void TearDown() override {
    if (!started_) return;
    CommandResult r = RunCommand({"bash", ClusterScript(), "--down", "--state", state_});
    EXPECT_EQ(r.exit_code, 0) << r.output;
  }

  // An instant query; the result vector.
  absl::StatusOr<json> Query(const std::string& expr) {
    auto res = Client(prometheus_)
                   ->Get("/api/v1/query", httplib::Params{{"query", expr}}, httplib::Headers{});
    if (!res) return absl::UnavailableError("Prometheus did not answer");
    json j = json::parse(res->body, nullptr, false);
    if (j.is_discarded() || j.value("status", "") != "success") {
      return absl::InvalidArgumentError(absl::StrCat(expr, ": ", res->body.substr(0, 500)));
    }
    return j["data"]["result"];
  }

  // OK when the query returns at least one sample with a finite value.
  absl::Status HasFiniteSample(const std::string& expr) {
    absl::StatusOr<json> result = Query(expr);
    if (!result.ok()) return result.status();
    for (const json& s : *result) {
      double v = 0;
      if (absl::SimpleAtod(s["value"][1].get<std::string>(), &v) && std::isfinite(v))
        return absl::OkStatus();
    }
    return absl::NotFoundError(
        absl::StrCat("no finite sample from ", expr, " (got ", result->dump().substr(0, 300), ")"));
  }

  // POST /v1/chat/completions to worker `w`; the HTTP status.
  int Chat(int w, const json& body) {
    auto res = Client(workers_[w])->Post("/v1/chat/completions", body.dump(), "application/json");
    return res ? res->status : -1;
  }

  double WorkerSum(const std::string& metric) {
    double sum = 0;
    for (const std::string& w : workers_) {
      absl::StatusOr<std::string> page = Get(w, "/metrics");
      if (page.ok()) sum += MetricSums(*page)[metric];
    }
    return sum;
  }

  // One round of traffic, as a client population would send it: a replay of every restore
  // mode, a malformed request (400), and a client that reuses a conversation id with a
  // different history (the stored turn does not match: a "mismatch" fallback).
  void Traffic(int round) {
    CommandResult r =
        RunCommand({BinDir() + "/krul-replay", "--workers=" + env_["KRUL_WORKERS"],
                    "--max_conversations=4", "--max_turns=3", "--max_tokens=8", "--think_ms=0",
                    absl::StrCat("--run_id=live", round, "-", getpid())},
                   "", absl::Seconds(120));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(Chat(0, json{{"messages", json::array()}}), 400);
    const std::string id = absl::StrCat("reused-", round, "-", getpid());
    const double persisted = WorkerSum("krul_worker_persists_total");
    ASSERT_EQ(Chat(0, json{{"conversation_id", id},
                           {"max_tokens", 4},
                           {"messages", {{{"role", "user"}, {"content", "hello there"}}}}}),
              200);
    // The turn is stored after the response: wait for its persist before reusing the id.
    ASSERT_TRUE(WaitFor([&] { return WorkerSum("krul_worker_persists_total") > persisted; },
                        absl::Seconds(30), "the first turn to be persisted"));
    ASSERT_EQ(Chat(0, json{{"conversation_id", id},
                           {"max_tokens", 4},
                           {"messages",
                            {{{"role", "user"}, {"content", "something else"}},
                             {{"role", "assistant"}, {"content", "an answer"}},
                             {{"role", "user"}, {"content", "and now?"}}}}}),
              200);
  }

  // Waits until Prometheus has scraped every target after the traffic: its per-instance sums
  // of the request counters equal what the services report now.
  void WaitForScrape() {
    auto caught_up = [&]() -> absl::Status {
      for (const auto& [targets, metric] : {std::pair<std::vector<std::string>, std::string>{
                                                workers_, "krul_worker_requests_total"},
                                            {kvstore_metrics_, "krul_kvstore_requests_total"}}) {
        for (const std::string& t : targets) {
          absl::StatusOr<std::string> page = Get(t, "/metrics");
          if (!page.ok()) return page.status();
          const double live = MetricSums(*page)[metric];
          absl::StatusOr<json> q = Query(absl::StrCat("sum(", metric, "{instance=\"", t, "\"})"));
          if (!q.ok()) return q.status();
          double seen = -1;
          if (!q->empty()) absl::SimpleAtod((*q)[0]["value"][1].get<std::string>(), &seen);
          if (seen != live)
            return absl::UnavailableError(
                absl::StrCat(t, " ", metric, ": Prometheus has ", seen, ", live ", live));
        }
      }
      return absl::OkStatus();
    };
    ASSERT_TRUE(WaitForOk(caught_up, absl::Seconds(30), "Prometheus to scrape the traffic",
                          absl::Milliseconds(200)));
  }

  std::unique_ptr<ScopedTempDir> tmp_;  // holds the cluster's state folder and the screenshot
  std::string state_;
  bool started_ = false;
  std::map<std::string, std::string> env_;
  std::string prometheus_;
  std::vector<std::string> workers_;
  std::vector<std::string> kvstore_metrics_;
};

TEST_F(LiveClusterTest, EveryPanelAndRuleHasDataAndEveryMetricIsExported) {
  // Two rounds: counters and histogram series are born on their first event, so the second
  // round is what rate() sees as an increase.
  ASSERT_NO_FATAL_FAILURE(Traffic(1));
  ASSERT_NO_FATAL_FAILURE(WaitForScrape());
  ASSERT_NO_FATAL_FAILURE(Traffic(2));
  ASSERT_NO_FATAL_FAILURE(WaitForScrape());

  // The rules Prometheus loaded (not the files: this proves they loaded).
  auto rules_res = Client(prometheus_)->Get("/api/v1/rules");
  ASSERT_TRUE(rules_res);
  json rules = json::parse(rules_res->body, nullptr, false);
  ASSERT_FALSE(rules.is_discarded());
  std::set<std::string> recorded;
  std::vector<std::string> rule_queries;
  int alerts = 0;
  for (const json& g : rules["data"]["groups"]) {
    for (const json& r : g["rules"]) {
      EXPECT_EQ(r.value("health", ""), "ok")
          << r.value("name", "") << ": " << r.value("lastError", "");
      rule_queries.push_back(r.value("query", ""));
      if (r.value("type", "") == "recording") recorded.insert(r.value("name", ""));
      if (r.value("type", "") == "alerting") ++alerts;
    }
  }
  EXPECT_GE(recorded.size(), 20u);
  EXPECT_GE(alerts, 8);

  // Every recording rule has data (they are evaluated every second).
  for (const std::string& name : recorded) {
    EXPECT_TRUE(WaitForOk([&] { return HasFiniteSample(name); }, absl::Seconds(30),
                          absl::StrCat("recording rule ", name), absl::Milliseconds(250)));
  }
  // Every dashboard panel query has data; $__rate_interval as Grafana would pick it for a
  // 1 s scrape interval is far below 1m, which keeps both rounds in the window.
  std::vector<PanelQuery> panels =
      DashboardQueries(SourceDir() + "/deploy/grafana/dashboards", "1m");
  ASSERT_GE(panels.size(), 20u);
  for (const PanelQuery& p : panels) {
    absl::Status s = HasFiniteSample(p.expr);
    EXPECT_TRUE(s.ok()) << p.dashboard << " / " << p.panel << " (" << p.ref_id << "): " << s;
  }

  // Every metric name in the dashboards and the rules: exported by the services (live
  // /metrics), recorded by a loaded rule (krul:*), or Prometheus' own `up`.
  std::set<std::string> exported;
  for (const std::vector<std::string>* targets : {&workers_, &kvstore_metrics_}) {
    for (const std::string& t : *targets) {
      absl::StatusOr<std::string> page = Get(t, "/metrics");
      ASSERT_TRUE(page.ok()) << page.status();
      for (const auto& [name, v] : MetricSums(*page)) exported.insert(name);
    }
  }
  std::set<std::string> used;
  for (const PanelQuery& p : panels)
    for (const std::string& n : SelectedNames(p.expr)) used.insert(n);
  for (const std::string& q : rule_queries)
    for (const std::string& n : SelectedNames(q)) used.insert(n);
  ASSERT_GE(used.size(), 25u);
  for (const std::string& name : used) {
    if (name == "up") continue;
    if (absl::StartsWith(name, "krul:")) {
      EXPECT_TRUE(recorded.count(name)) << name << " is used but no loaded rule records it";
    } else {
      EXPECT_TRUE(exported.count(name)) << name << " is used but no service exports it";
    }
  }

  // The screenshot of TTFT by restore mode, when Debian's chromium is there.
  if (FindTool("chromium", "KRUL_CHROMIUM").empty()) {
    std::cout << "note: chromium not found; no screenshot taken\n";
    return;
  }
  // KRUL_DEPLOY_SCREENSHOT keeps the image (e.g. to look at it); by default it goes with the
  // test's temporary folder.
  const char* keep = std::getenv("KRUL_DEPLOY_SCREENSHOT");
  const std::string png =
      keep != nullptr && *keep != '\0' ? keep : tmp_->path() + "/ttft-by-mode.png";
  CommandResult shot = RunCommand({"bash", SourceDir() + "/deploy/local/prometheus-screenshot.sh",
                                   env_["KRUL_PROMETHEUS_URL"], png},
                                  "", absl::Seconds(90));
  ASSERT_EQ(shot.exit_code, 0) << shot.output;
  const std::string data = ReadFile(png);
  EXPECT_EQ(data.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_GT(data.size(), 20000u) << "a screenshot that small is a blank page";
}

}  // namespace
}  // namespace krul::deploy_test
