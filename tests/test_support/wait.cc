#include "test_support/wait.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace krul::testing {
namespace {

// Polls `check` until OK or `timeout`; `show_last` adds the last non-OK
// status to the failure message.
::testing::AssertionResult Poll(absl::FunctionRef<absl::Status()> check, absl::Duration timeout,
                                std::string_view what, absl::Duration poll_interval,
                                bool show_last) {
  const absl::Time start = absl::Now();
  const absl::Time deadline = start + timeout;
  while (true) {
    // Read the clock before checking: a check that started before the
    // deadline counts even when it returns after it.
    const bool last_chance = absl::Now() >= deadline;
    absl::Status status = check();
    if (status.ok()) return ::testing::AssertionSuccess();
    if (last_chance) {
      ::testing::AssertionResult failure = ::testing::AssertionFailure()
                                           << "timed out after "
                                           << absl::FormatDuration(absl::Now() - start)
                                           << " waiting for " << what;
      if (show_last) failure << " (last: " << status << ")";
      return failure;
    }
    absl::SleepFor(std::clamp(deadline - absl::Now(), absl::ZeroDuration(), poll_interval));
  }
}

}  // namespace

::testing::AssertionResult WaitFor(absl::FunctionRef<bool()> condition, absl::Duration timeout,
                                   std::string_view what, absl::Duration poll_interval) {
  return Poll([&] { return condition() ? absl::OkStatus() : absl::UnavailableError(""); }, timeout,
              what, poll_interval, /*show_last=*/false);
}

::testing::AssertionResult WaitForOk(absl::FunctionRef<absl::Status()> check,
                                     absl::Duration timeout, std::string_view what,
                                     absl::Duration poll_interval) {
  return Poll(check, timeout, what, poll_interval, /*show_last=*/true);
}

}  // namespace krul::testing
