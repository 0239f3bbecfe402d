#include "krul/rpc/bearer_token.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace krul::rpc {
namespace {

TEST(BearerTokenTest, Sha256HexMatchesPublishedVectors) {
  // FIPS 180-2 test vectors.
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(BearerTokenTest, TokensArePrintableAndLongEnough) {
  EXPECT_TRUE(ValidateToken("0123456789abcdef").ok());
  EXPECT_EQ(ValidateToken("short").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateToken("0123456789 abcdef").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateToken(std::string("0123456789abcde\n", 16)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateToken(std::string(4097, 'a')).code(), absl::StatusCode::kInvalidArgument);
}

TEST(BearerTokenTest, ParseBearerAcceptsOnlyTheBearerScheme) {
  absl::StatusOr<absl::string_view> t = ParseBearer("Bearer secret-token-123456");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(*t, "secret-token-123456");
  EXPECT_EQ(*ParseBearer("bearer abc"), "abc");
  EXPECT_EQ(ParseBearer("Basic dXNlcjpwYXNz").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ParseBearer("Bearer ").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(ParseBearer("").status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(BearerTokenTest, ReadTokenFileTrimsTheNewlineAndValidates) {
  const std::string path = ::testing::TempDir() + "/bearer_token_test.token";
  {
    std::ofstream out(path);
    out << "  0123456789abcdef0123\n";
  }
  absl::StatusOr<std::string> t = ReadTokenFile(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*t, "0123456789abcdef0123");
  {
    std::ofstream out(path);
    out << "tiny\n";
  }
  EXPECT_EQ(ReadTokenFile(path).status().code(), absl::StatusCode::kInvalidArgument);
  std::remove(path.c_str());
  EXPECT_EQ(ReadTokenFile(path).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace krul::rpc
