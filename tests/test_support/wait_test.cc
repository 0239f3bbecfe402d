// The bounded wait the integration tests use instead of fixed sleeps.
#include "test_support/wait.h"

#include <atomic>
#include <thread>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace krul::testing {
namespace {

TEST(WaitForTest, ReturnsOnceTheConditionHolds) {
  int calls = 0;
  const ::testing::AssertionResult r =
      WaitFor([&] { return ++calls >= 3; }, absl::Seconds(60), "the third call");
  EXPECT_TRUE(r) << r.message();
  EXPECT_EQ(calls, 3);
}

TEST(WaitForTest, SeesAConditionSetByAnotherThread) {
  std::atomic<bool> flag{false};
  std::thread setter([&] { flag = true; });
  EXPECT_TRUE(WaitFor([&] { return flag.load(); }, absl::Seconds(60), "the flag"));
  setter.join();
}

TEST(WaitForTest, TimesOutWithAMessageNamingWhatItWaitedFor) {
  int calls = 0;
  const absl::Time start = absl::Now();
  const ::testing::AssertionResult r = WaitFor(
      [&] {
        ++calls;
        return false;
      },
      absl::Milliseconds(50), "a thing that never happens", absl::Milliseconds(5));
  EXPECT_FALSE(r);
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));
  EXPECT_GE(calls, 2);  // polled, not checked once
  EXPECT_NE(std::string(r.message()).find("waiting for a thing that never happens"),
            std::string::npos)
      << r.message();
}

TEST(WaitForOkTest, TheTimeoutMessageCarriesTheLastStatus) {
  int calls = 0;
  const ::testing::AssertionResult r = WaitForOk(
      [&] { return absl::NotFoundError("version " + std::to_string(++calls) + " missing"); },
      absl::Milliseconds(20), "a version", absl::Milliseconds(5));
  EXPECT_FALSE(r);
  const std::string message = r.message();
  EXPECT_NE(message.find("version " + std::to_string(calls) + " missing"), std::string::npos)
      << message;
  EXPECT_TRUE(WaitForOk([] { return absl::OkStatus(); }, absl::ZeroDuration(), "nothing"));
}

}  // namespace
}  // namespace krul::testing
