// The pieces of --local_cluster_net=testbed that need no root: the helper
// program runner (exit codes, stdout, stderr to a file, the timeout),
// NetnsScope's refusals, and Testbed's argument checks before it calls
// deploy/local/testbed.sh. The testbed itself is exercised end to end in
// loadtest_testbed_test.cc.
#include "cluster/testbed.h"

#include <filesystem>
#include <string>

#include "absl/time/clock.h"
#include "cluster/command.h"
#include "cluster/netns_scope.h"
#include "gtest/gtest.h"
#include "test_support/test_data.h"

namespace krul::loadtest {
namespace {

TEST(RunCommandTest, CapturesStdoutAndTheExitCode) {
  auto r =
      RunCommand({"/bin/sh", "-c", "echo hello; echo oops >&2; exit 3"}, "", absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->code, 3);
  EXPECT_FALSE(r->timed_out);
  EXPECT_NE(r->output.find("hello\n"), std::string::npos);
  EXPECT_NE(r->output.find("oops\n"), std::string::npos);  // merged without a log
}

TEST(RunCommandTest, AppendsStderrToTheLog) {
  const std::string log = krul::testing::ScratchDir() + "/stderr.log";
  krul::testing::WriteFileOrDie(log, "before\n");
  auto r = RunCommand({"/bin/sh", "-c", "echo out; echo err >&2"}, log, absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->code, 0);
  EXPECT_EQ(r->output, "out\n");
  EXPECT_EQ(krul::testing::ReadFileOrDie(log), "before\nerr\n");
}

TEST(RunCommandTest, KillsAProgramPastItsTimeout) {
  const absl::Time start = absl::Now();
  // The shell's child (sleep) holds stdout too: the whole group is killed.
  auto r = RunCommand({"/bin/sh", "-c", "sleep 30; echo late"}, "", absl::Milliseconds(300));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->timed_out);
  EXPECT_EQ(r->code, -1);
  EXPECT_EQ(r->output, "");
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

TEST(RunCommandTest, AMissingProgramExits127) {
  auto r = RunCommand({"/nonexistent/program"}, "", absl::Seconds(10));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->code, 127);
}

TEST(NetnsScopeTest, RefusesBadAndMissingNamespaces) {
  EXPECT_EQ(NetnsScope::Enter("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NetnsScope::Enter("../etc").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NetnsScope::Enter("krultbnosuchns-compute").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(TestbedTest, ChecksItsArgumentsBeforeTheScript) {
  TestbedOptions o;
  o.script = "/nonexistent/testbed.sh";
  EXPECT_EQ(Testbed::Check(o.script).code(), absl::StatusCode::kNotFound);
  o.name = "other";
  EXPECT_EQ(Testbed::Up(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.name = "krultbtoolongname";
  EXPECT_EQ(Testbed::Up(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.name = "krultbt1";
  o.rate_gbit_per_s = 0;
  EXPECT_EQ(Testbed::Up(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.rate_gbit_per_s = 1;
  o.delay_ms = -1;
  EXPECT_EQ(Testbed::Up(o).status().code(), absl::StatusCode::kInvalidArgument);
  o.delay_ms = 0;
  EXPECT_EQ(Testbed::Up(o).status().code(), absl::StatusCode::kNotFound);  // the script
}

TEST(TestbedTest, CheckReportsTheScriptsReason) {
  const std::string script = krul::testing::ScratchDir() + "/fake_testbed.sh";
  krul::testing::WriteFileOrDie(script,
                                "#!/bin/sh\necho 'testbed: not root: network namespaces cannot be "
                                "made' >&2\nexit 1\n");
  std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  const absl::Status s = Testbed::Check(script);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "no testbed here: not root: network namespaces cannot be made");
}

}  // namespace
}  // namespace krul::loadtest
