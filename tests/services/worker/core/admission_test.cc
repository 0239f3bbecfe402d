// Bounded admission: slots, FIFO queue, rejection when full, timeouts.
#include "worker/core/admission.h"

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "test_support/wait.h"

namespace krul::worker {
namespace {

using krul::testing::kDefaultWaitTimeout;
using krul::testing::WaitFor;

// Waits until `a` has `n` queued waiters. A fine poll: the queue-full test's
// waiter only stays queued for 300 ms. On timeout the failure is recorded
// and the caller goes on, so that its threads can still be joined.
bool WaitForQueued(Admission& a, int n) {
  const ::testing::AssertionResult r =
      WaitFor([&] { return a.queued() == n; }, kDefaultWaitTimeout,
              std::to_string(n) + " queued waiter(s)", absl::Milliseconds(1));
  EXPECT_TRUE(r);
  return r;
}

TEST(AdmissionTest, HandsOutDistinctSlotsUpToTheLimit) {
  Admission a(2, 0);
  auto t1 = a.Acquire(absl::Seconds(1));
  auto t2 = a.Acquire(absl::Seconds(1));
  ASSERT_TRUE(t1.ok() && t2.ok());
  EXPECT_NE(t1->slot(), t2->slot());
  EXPECT_EQ(a.active(), 2);
  // No queue: the third is turned away at once.
  auto t3 = a.Acquire(absl::Seconds(1));
  EXPECT_EQ(t3.status().code(), absl::StatusCode::kResourceExhausted);
  t1->Release();
  EXPECT_EQ(a.active(), 1);
  auto t4 = a.Acquire(absl::Seconds(1));
  EXPECT_TRUE(t4.ok());
}

TEST(AdmissionTest, QueueFullIsRejectedAndWaitersTimeOut) {
  Admission a(1, 1);
  auto held = a.Acquire(absl::Seconds(1));
  ASSERT_TRUE(held.ok());
  std::atomic<int> outcome{-1};
  std::thread waiter([&] {
    auto t = a.Acquire(absl::Milliseconds(300));
    outcome = static_cast<int>(t.status().code());
  });
  WaitForQueued(a, 1);
  // The one queue place is taken: rejected at once.
  const absl::Time t0 = absl::Now();
  auto rejected = a.Acquire(absl::Seconds(5));
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(1));
  waiter.join();
  EXPECT_EQ(outcome.load(), static_cast<int>(absl::StatusCode::kResourceExhausted));
  EXPECT_GE(a.RetryAfterSeconds(), 1);
}

TEST(AdmissionTest, ReleaseWakesWaitersInOrder) {
  Admission a(1, 4);
  auto held = a.Acquire(absl::Seconds(1));
  ASSERT_TRUE(held.ok());
  std::vector<int> order;
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      auto t = a.Acquire(absl::Seconds(10));
      ASSERT_TRUE(t.ok());
      std::lock_guard<std::mutex> lock(mu);
      order.push_back(i);
    });
    if (!WaitForQueued(a, i + 1)) break;
  }
  held->Release();
  for (auto& t : threads) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(a.active(), 0);
}

TEST(AdmissionTest, ShutdownCancelsWaiters) {
  Admission a(1, 2);
  auto held = a.Acquire(absl::Seconds(1));
  std::atomic<int> code{-1};
  std::thread waiter(
      [&] { code = static_cast<int>(a.Acquire(absl::Seconds(10)).status().code()); });
  WaitForQueued(a, 1);
  a.Shutdown();
  waiter.join();
  EXPECT_EQ(code.load(), static_cast<int>(absl::StatusCode::kCancelled));
  held->Release();
}

}  // namespace
}  // namespace krul::worker
