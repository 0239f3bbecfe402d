// deploy/grafana: the dashboards are well-formed Grafana JSON, every panel query is PromQL
// that promtool accepts, reads only krul metrics (or Prometheus' own `up`), and the chart
// ships exactly these dashboards and rules (helm/krul/files links to deploy/).
#include <filesystem>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "deploy_test_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "promql_names.h"

namespace krul::deploy_test {
namespace {

std::string DashDir() { return SourceDir() + "/deploy/grafana/dashboards"; }

TEST(GrafanaDashboardsTest, DashboardsAreWellFormed) {
  std::vector<std::string> files = ListFiles(DashDir(), ".json");
  ASSERT_GE(files.size(), 2u);
  std::set<std::string> uids;
  for (const std::string& file : files) {
    SCOPED_TRACE(file);
    nlohmann::json d = nlohmann::json::parse(ReadFile(file), nullptr, false);
    ASSERT_FALSE(d.is_discarded());
    EXPECT_TRUE(uids.insert(d.value("uid", "")).second) << "duplicate or missing uid";
    EXPECT_FALSE(d.value("title", "").empty());
    std::set<int> ids;
    int queries = 0;
    for (const auto& p : d["panels"]) {
      EXPECT_TRUE(ids.insert(p.value("id", -1)).second)
          << "duplicate panel id " << p.value("id", -1);
      const auto& g = p["gridPos"];
      EXPECT_LE(g.value("x", 99) + g.value("w", 99), 24) << p.value("title", "");
      if (p.value("type", "") == "row") continue;
      EXPECT_FALSE(p.value("title", "").empty());
      EXPECT_FALSE(p.value("description", "").empty())
          << p.value("title", "") << " has no description";
      EXPECT_EQ(p["datasource"].value("uid", ""), "${datasource}") << p.value("title", "");
      ASSERT_FALSE(p.value("targets", nlohmann::json::array()).empty()) << p.value("title", "");
      std::set<std::string> refs;
      for (const auto& t : p["targets"]) {
        EXPECT_TRUE(refs.insert(t.value("refId", "")).second);
        EXPECT_FALSE(t.value("expr", "").empty());
        ++queries;
      }
    }
    EXPECT_GE(queries, 10);
  }
}

TEST(GrafanaDashboardsTest, EveryPanelQueryIsValidPromQLOnKrulMetrics) {
  std::vector<PanelQuery> queries = DashboardQueries(DashDir(), "1m");
  ASSERT_GE(queries.size(), 20u);
  std::string rules = "groups:\n  - name: dashboards\n    rules:\n";
  int n = 0;
  for (const PanelQuery& q : queries) {
    std::set<std::string> names = SelectedNames(q.expr);
    EXPECT_FALSE(names.empty()) << q.panel << ": no metric in " << q.expr;
    for (const std::string& name : names) {
      EXPECT_TRUE(name == "up" || absl::StartsWith(name, "krul_") ||
                  absl::StartsWith(name, "krul:"))
          << q.dashboard << " / " << q.panel << " reads '" << name << "'";
    }
    // A JSON string is a valid YAML scalar: no quoting trouble with PromQL's quotes.
    rules += absl::StrCat("      - record: dashboard_query_", n++,
                          "\n        expr: ", nlohmann::json(q.expr).dump(), "\n");
  }
  const std::string promtool = FindTool("promtool", "KRUL_PROMTOOL");
  if (promtool.empty()) GTEST_SKIP() << "promtool not found: the queries' syntax is not checked";
  ScopedTempDir dir("krul-dash");
  ASSERT_TRUE(WriteFile(dir.path() + "/dashboards.yaml", rules));
  CommandResult r = RunCommand({promtool, "check", "rules", dir.path() + "/dashboards.yaml"});
  EXPECT_EQ(r.exit_code, 0) << r.output << "\n" << rules;
}

TEST(GrafanaDashboardsTest, TheChartShipsTheseDashboardsAndRules) {
  namespace fs = std::filesystem;
  std::error_code ec;
  EXPECT_TRUE(fs::equivalent(SourceDir() + "/helm/krul/files/grafana", DashDir(), ec))
      << "helm/krul/files/grafana must link to deploy/grafana/dashboards";
  EXPECT_TRUE(fs::equivalent(SourceDir() + "/helm/krul/files/prometheus",
                             SourceDir() + "/deploy/prometheus/rules", ec))
      << "helm/krul/files/prometheus must link to deploy/prometheus/rules";
}

TEST(PromqlNamesTest, FindsTheSeriesAnExpressionSelects) {
  EXPECT_EQ(
      SelectedNames(
          R"(histogram_quantile(0.99, sum by (mode, le) (rate(krul_worker_ttft_seconds_bucket{namespace=~".*"}[5m]))))"),
      (std::set<std::string>{"krul_worker_ttft_seconds_bucket"}));
  EXPECT_EQ(SelectedNames("krul_kvstore_bytes / on (namespace, tier) group_left () "
                          "krul:kvstore_capacity_bytes:config"),
            (std::set<std::string>{"krul_kvstore_bytes", "krul:kvstore_capacity_bytes:config"}));
  EXPECT_EQ(SelectedNames(R"(sum(up{job="krul-kvstore", namespace=~"$namespace"}) or vector(0))"),
            (std::set<std::string>{"up"}));
  EXPECT_EQ(SelectedNames("max by (instance) (sum without (tier) (a)) / count(b)"),
            (std::set<std::string>{"a", "b"}));
  EXPECT_EQ(SelectedNames("a_total offset 1h > bool 0.5 * b unless c"),
            (std::set<std::string>{"a_total", "b", "c"}));
}

}  // namespace
}  // namespace krul::deploy_test
