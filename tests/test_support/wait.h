// Bounded waits for tests: poll a condition (a metric, a port, a health
// answer, a process exit) until it holds or a deadline passes, instead of
// sleeping a fixed time and hoping. The deadlines are generous because a
// loaded 2-core CI machine can be many times slower than a laptop; a
// condition that holds early costs only one poll interval.
//
//   ASSERT_TRUE(WaitFor([&] { return Count() >= 2; }, absl::Seconds(30),
//                       "two persisted turns"));
//   ASSERT_TRUE(WaitForOk([&] { return stub.Health(...); }, absl::Seconds(30),
//                         "the server to report DRAINING"));
#ifndef KRUL_TESTS_TEST_SUPPORT_WAIT_H_
#define KRUL_TESTS_TEST_SUPPORT_WAIT_H_

#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace krul::testing {

// How long to wait when a test has no better figure: long enough for a
// busy CI machine, short enough that a hung test fails within the CTest
// timeout.
inline constexpr absl::Duration kDefaultWaitTimeout = absl::Seconds(60);
// Between polls; the condition is also checked once right away.
inline constexpr absl::Duration kDefaultPollInterval = absl::Milliseconds(10);

// Calls `condition` until it returns true (success) or `timeout` has
// passed (failure: "timed out after T waiting for <what>"). `condition`
// runs on the calling thread.
::testing::AssertionResult WaitFor(absl::FunctionRef<bool()> condition, absl::Duration timeout,
                                   std::string_view what,
                                   absl::Duration poll_interval = kDefaultPollInterval);

// As WaitFor, for a check that says why it does not hold yet: done when
// `check` returns OK; on timeout the failure carries the last status.
::testing::AssertionResult WaitForOk(absl::FunctionRef<absl::Status()> check,
                                     absl::Duration timeout, std::string_view what,
                                     absl::Duration poll_interval = kDefaultPollInterval);

}  // namespace krul::testing

#endif  // KRUL_TESTS_TEST_SUPPORT_WAIT_H_
