#include "krul/base/status_macros.h"

#include <memory>
#include <string>
#include <utility>

#include "gtest/gtest.h"

namespace krul {
namespace {

absl::Status Step(bool ok, int* calls) {
  ++*calls;
  return ok ? absl::OkStatus() : absl::DataLossError("step failed");
}

// Runs three steps, stopping at the first failure.
absl::Status ThreeSteps(bool a, bool b, bool c, int* calls) {
  KRUL_RETURN_IF_ERROR(Step(a, calls));
  KRUL_RETURN_IF_ERROR(Step(b, calls));
  KRUL_RETURN_IF_ERROR(Step(c, calls));
  return absl::OkStatus();
}

TEST(StatusMacrosTest, ReturnIfErrorStopsAtTheFirstFailure) {
  int calls = 0;
  EXPECT_TRUE(ThreeSteps(true, true, true, &calls).ok());
  EXPECT_EQ(calls, 3);

  calls = 0;
  absl::Status s = ThreeSteps(true, false, true, &calls);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), "step failed");
  EXPECT_EQ(calls, 2);  // the third step never ran
}

absl::StatusOr<std::unique_ptr<int>> MakeInt(int v) {
  if (v < 0) return absl::InvalidArgumentError("negative");
  return std::make_unique<int>(v);
}

// A move-only value, a declaration as lhs, and a StatusOr-returning caller.
absl::StatusOr<int> Twice(int v, int* evaluations) {
  KRUL_ASSIGN_OR_RETURN(std::unique_ptr<int> p, (++*evaluations, MakeInt(v)));
  std::unique_ptr<int> q;  // an existing variable as lhs
  KRUL_ASSIGN_OR_RETURN(q, MakeInt(*p * 2));
  return *q;
}

TEST(StatusMacrosTest, AssignOrReturnAssignsOrPropagates) {
  int evaluations = 0;
  absl::StatusOr<int> ok = Twice(21, &evaluations);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, 42);
  EXPECT_EQ(evaluations, 1);  // the expression is evaluated once

  evaluations = 0;
  absl::StatusOr<int> bad = Twice(-1, &evaluations);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "negative");
  EXPECT_EQ(evaluations, 1);
}

TEST(StatusMacrosTest, ReturnIfErrorWorksInStatusOrFunctions) {
  auto f = [](bool fail) -> absl::StatusOr<std::string> {
    KRUL_RETURN_IF_ERROR(fail ? absl::NotFoundError("nope") : absl::OkStatus());
    return std::string("done");
  };
  EXPECT_EQ(*f(false), "done");
  EXPECT_EQ(f(true).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace krul
