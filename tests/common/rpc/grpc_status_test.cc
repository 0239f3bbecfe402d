#include "krul/rpc/grpc_status.h"

#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace krul {
namespace {

// Every canonical code with its gRPC counterpart, written out by name (not
// derived from the numbers the mapping relies on).
const std::vector<std::pair<absl::StatusCode, grpc::StatusCode>>& AllCodes() {
  static const auto* codes = new std::vector<std::pair<absl::StatusCode, grpc::StatusCode>>{
      {absl::StatusCode::kCancelled, grpc::StatusCode::CANCELLED},
      {absl::StatusCode::kUnknown, grpc::StatusCode::UNKNOWN},
      {absl::StatusCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT},
      {absl::StatusCode::kDeadlineExceeded, grpc::StatusCode::DEADLINE_EXCEEDED},
      {absl::StatusCode::kNotFound, grpc::StatusCode::NOT_FOUND},
      {absl::StatusCode::kAlreadyExists, grpc::StatusCode::ALREADY_EXISTS},
      {absl::StatusCode::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED},
      {absl::StatusCode::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::StatusCode::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION},
      {absl::StatusCode::kAborted, grpc::StatusCode::ABORTED},
      {absl::StatusCode::kOutOfRange, grpc::StatusCode::OUT_OF_RANGE},
      {absl::StatusCode::kUnimplemented, grpc::StatusCode::UNIMPLEMENTED},
      {absl::StatusCode::kInternal, grpc::StatusCode::INTERNAL},
      {absl::StatusCode::kUnavailable, grpc::StatusCode::UNAVAILABLE},
      {absl::StatusCode::kDataLoss, grpc::StatusCode::DATA_LOSS},
      {absl::StatusCode::kUnauthenticated, grpc::StatusCode::UNAUTHENTICATED},
  };
  return *codes;
}

TEST(GrpcStatusTest, OkBothWays) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_EQ(ToGrpcStatus(absl::OkStatus()).error_code(), grpc::StatusCode::OK);
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(GrpcStatusTest, EachCanonicalCodeMapsBothWaysWithItsMessage) {
  ASSERT_EQ(AllCodes().size(), 16u);
  for (const auto& [absl_code, grpc_code] : AllCodes()) {
    const std::string message = "block 3 of key#7: " + absl::StatusCodeToString(absl_code);
    const grpc::Status out = ToGrpcStatus(absl::Status(absl_code, message));
    EXPECT_EQ(out.error_code(), grpc_code) << message;
    EXPECT_EQ(out.error_message(), message);

    const absl::Status in = FromGrpcStatus(grpc::Status(grpc_code, message));
    EXPECT_EQ(in.code(), absl_code) << message;
    EXPECT_EQ(in.message(), message);

    const absl::Status round_trip = FromGrpcStatus(ToGrpcStatus(absl::Status(absl_code, message)));
    EXPECT_EQ(round_trip, absl::Status(absl_code, message));
  }
}

TEST(GrpcStatusTest, MessagesSurviveEmptyAndBinary) {
  const std::string binary("a\0b\xff\n", 5);
  EXPECT_EQ(FromGrpcStatus(ToGrpcStatus(absl::DataLossError(binary))).message(), binary);
  const absl::Status empty = FromGrpcStatus(ToGrpcStatus(absl::InternalError("")));
  EXPECT_EQ(empty.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(empty.message(), "");
}

TEST(GrpcStatusTest, NonCanonicalCodesBecomeUnknown) {
  const grpc::Status odd(static_cast<grpc::StatusCode>(99), "odd");
  const absl::Status in = FromGrpcStatus(odd);
  EXPECT_EQ(in.code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(in.message(), "odd");
  const grpc::Status out = ToGrpcStatus(absl::Status(static_cast<absl::StatusCode>(42), "odd"));
  EXPECT_EQ(out.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(out.error_message(), "odd");
}

}  // namespace
}  // namespace krul
