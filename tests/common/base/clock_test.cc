#include "krul/base/clock.h"

#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace krul {
namespace {

TEST(ClockTest, FakeClockMovesOnlyWhenTold) {
  const absl::Time start = absl::FromUnixSeconds(1000);
  FakeClock clock(start);
  EXPECT_EQ(clock.Now(), start);
  EXPECT_EQ(clock.Now(), start);
  clock.Advance(absl::Seconds(31));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(1031));
  clock.Advance(absl::Milliseconds(-1500));
  EXPECT_EQ(clock.Now(), absl::FromUnixMillis(1029500));
  clock.Set(absl::FromUnixSeconds(5));
  EXPECT_EQ(clock.Now(), absl::FromUnixSeconds(5));
}

TEST(ClockTest, FakeClockIsThreadSafe) {
  FakeClock clock(absl::UnixEpoch());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) clock.Advance(absl::Milliseconds(1));
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(clock.Now(), absl::UnixEpoch() + absl::Seconds(4));
}

TEST(ClockTest, RealClockIsTheWallClockAndShared) {
  Clock* real = Clock::Real();
  EXPECT_EQ(real, Clock::Real());
  const absl::Time before = absl::Now();
  const absl::Time now = real->Now();
  const absl::Time after = absl::Now();
  EXPECT_LE(before, now);
  EXPECT_LE(now, after);
}

}  // namespace
}  // namespace krul
