// deploy/prometheus: promtool accepts every rule file, the promtool unit tests pass, every
// alert has a unit test in which it fires and one in which it stays quiet and a runbook entry
// in docs/deploy.md, and the unit tests notice a broken threshold. Skips without promtool.
#include <filesystem>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "deploy_test_util.h"
#include "gtest/gtest.h"

namespace krul::deploy_test {
namespace {

std::string PromDir() { return SourceDir() + "/deploy/prometheus"; }

class PrometheusRulesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    promtool_ = FindTool("promtool", "KRUL_PROMTOOL");
    if (promtool_.empty()) {
      GTEST_SKIP()
          << "promtool not found: scripts/install-deps.sh installs Debian's prometheus package";
    }
  }
  std::string promtool_;
};

std::vector<std::string> AlertNames() {
  std::vector<std::string> names;
  std::regex re(R"(-\s+alert:\s+(\w+))");
  const std::string text = ReadFile(PromDir() + "/rules/krul-alerts.yaml");
  for (std::sregex_iterator it(text.begin(), text.end(), re), end; it != end; ++it) {
    names.push_back((*it)[1]);
  }
  return names;
}

TEST_F(PrometheusRulesTest, PromtoolAcceptsEveryRuleFile) {
  std::vector<std::string> files = ListFiles(PromDir() + "/rules", ".yaml");
  ASSERT_GE(files.size(), 3u);
  std::vector<std::string> argv = {promtool_, "check", "rules"};
  argv.insert(argv.end(), files.begin(), files.end());
  CommandResult r = RunCommand(argv);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(absl::StrContains(r.output, "FAILED")) << r.output;
}

TEST_F(PrometheusRulesTest, UnitTestsPass) {
  CommandResult r =
      RunCommand({promtool_, "test", "rules", "tests/krul-alerts.test.yaml"}, PromDir());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "SUCCESS")) << r.output;
}

TEST_F(PrometheusRulesTest, EveryAlertFiresInOneUnitTestAndStaysQuietInAnother) {
  const std::string tests = ReadFile(PromDir() + "/tests/krul-alerts.test.yaml");
  ASSERT_FALSE(tests.empty());
  // alertname: X, then either "exp_alerts: []" (quiet) or "exp_alerts:" and a list (fires).
  std::regex re(R"(alertname:\s+(\w+)\s*\n\s*exp_alerts:([^\n]*))");
  std::set<std::string> fires, quiet;
  for (std::sregex_iterator it(tests.begin(), tests.end(), re), end; it != end; ++it) {
    const std::string rest(absl::StripAsciiWhitespace((*it)[2].str()));
    (rest == "[]" ? quiet : fires).insert((*it)[1]);
  }
  std::vector<std::string> alerts = AlertNames();
  ASSERT_GE(alerts.size(), 8u);
  for (const std::string& a : alerts) {
    EXPECT_TRUE(fires.count(a)) << a << " never fires in tests/krul-alerts.test.yaml";
    EXPECT_TRUE(quiet.count(a)) << a << " is never shown quiet in tests/krul-alerts.test.yaml";
  }
}

// GitHub's anchor of a Markdown heading: lower case, spaces to '-', punctuation dropped.
std::string Anchor(absl::string_view heading) {
  std::string out;
  for (char c : heading) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_')
      out += absl::ascii_tolower(c);
    else if (c == ' ')
      out += '-';
  }
  return out;
}

TEST_F(PrometheusRulesTest, EveryAlertHasARunbookEntry) {
  const std::string doc = ReadFile(SourceDir() + "/docs/deploy.md");
  ASSERT_FALSE(doc.empty()) << "docs/deploy.md is missing";
  std::set<std::string> anchors;
  for (absl::string_view line : absl::StrSplit(doc, '\n')) {
    if (!absl::StartsWith(line, "#")) continue;
    anchors.insert(Anchor(absl::StripAsciiWhitespace(
        absl::StripLeadingAsciiWhitespace(line.substr(line.find_first_not_of('#'))))));
  }
  const std::string alerts = ReadFile(PromDir() + "/rules/krul-alerts.yaml");
  std::regex re(R"(runbook:\s+"docs/deploy\.md#([\w-]+)\")");
  std::set<std::string> linked;
  for (std::sregex_iterator it(alerts.begin(), alerts.end(), re), end; it != end; ++it) {
    linked.insert((*it)[1]);
    EXPECT_TRUE(anchors.count((*it)[1])) << "docs/deploy.md has no heading for #" << (*it)[1];
  }
  for (const std::string& a : AlertNames()) {
    EXPECT_TRUE(linked.count(absl::AsciiStrToLower(a))) << a << " has no runbook annotation";
  }
}

// The unit tests can fail: with KrulKvstoreNearCapacity's threshold moved from 85% to 95%,
// the test where a disk is 90% full must notice.
TEST_F(PrometheusRulesTest, UnitTestsCatchABrokenThreshold) {
  ScopedTempDir tmp("krul-rules");
  const std::string& dir = tmp.path();
  ASSERT_FALSE(dir.empty());
  namespace fs = std::filesystem;
  fs::copy(PromDir(), dir + "/prometheus", fs::copy_options::recursive);
  const std::string alerts_path = dir + "/prometheus/rules/krul-alerts.yaml";
  const std::string alerts = ReadFile(alerts_path);
  const std::string broken = absl::StrReplaceAll(
      alerts,
      {{"krul:kvstore_capacity_used:ratio > 0.85", "krul:kvstore_capacity_used:ratio > 0.95"}});
  ASSERT_NE(broken, alerts) << "the near-capacity expression changed; update this test";
  ASSERT_TRUE(WriteFile(alerts_path, broken));
  CommandResult r =
      RunCommand({promtool_, "test", "rules", "tests/krul-alerts.test.yaml"}, dir + "/prometheus");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(absl::StrContains(r.output, "near capacity fires")) << r.output;
}

}  // namespace
}  // namespace krul::deploy_test
