#include "krul/rpc/token_table.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "krul/rpc/bearer_token.h"

namespace krul::rpc {
namespace {

constexpr char kAliceToken[] = "alice-token-0123456789";
constexpr char kBobToken[] = "bob-token-0123456789ab";

std::string Line(const std::string& tenant, const std::string& token) {
  return absl::StrCat(tenant, ":", Sha256Hex(token), "\n");
}

// A file of its own per test (ctest runs test binaries in parallel).
std::string TablePath(const std::string& name) {
  return absl::StrCat(::testing::TempDir(), "/token_table_test.", getpid(), ".", name);
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good());
}

TEST(TokenTableTest, TheCheckRefusesTenantsItDoesNotAccept) {
  auto no_slash = [](absl::string_view tenant) {
    return tenant.find('/') == absl::string_view::npos
               ? absl::OkStatus()
               : absl::InvalidArgumentError("no '/' in tenant names");
  };
  auto ok = ParseTokenTable(Line("alice", kAliceToken), no_slash);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->at(Sha256Hex(kAliceToken)), "alice");
  auto refused = ParseTokenTable("# c\n" + Line("a/b", kAliceToken), no_slash);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("line 2"), absl::string_view::npos) << refused.status();
  // Without a check any non-empty name goes.
  EXPECT_TRUE(ParseTokenTable(Line("a/b", kAliceToken)).ok());
}

TEST(TokenTableTest, LooksUpTokensAndHeadersWithoutEchoingThem) {
  const std::string path = TablePath("lookup");
  Write(path, Line("alice", kAliceToken) + Line("bob", kBobToken));
  auto table = TokenTable::FromFile(path, "test_file");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ((*table)->size(), 2u);
  EXPECT_EQ(*(*table)->Lookup(kBobToken), "bob");
  const std::string header = absl::StrCat("bearer ", kAliceToken);
  const absl::string_view value = header;
  EXPECT_EQ(*(*table)->LookupHeader(&value), "alice");
  EXPECT_EQ((*table)->LookupHeader(nullptr).status().code(), absl::StatusCode::kUnauthenticated);
  auto wrong = (*table)->Lookup("not-a-known-token-000");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(wrong.status().message().find("not-a-known"), absl::string_view::npos);
  // The hash itself is not a token.
  EXPECT_FALSE((*table)->Lookup(Sha256Hex(kAliceToken)).ok());
  const std::string basic = absl::StrCat("Basic ", kAliceToken);
  const absl::string_view basic_value = basic;
  EXPECT_EQ((*table)->LookupHeader(&basic_value).status().code(),
            absl::StatusCode::kUnauthenticated);
  std::remove(path.c_str());
}

TEST(TokenTableTest, ReloadAddsAndRevokesAndKeepsTheTableOnAMalformedFile) {
  const std::string path = TablePath("reload");
  Write(path, Line("alice", kAliceToken));
  auto table = TokenTable::FromFile(path, "test_file");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_FALSE((*table)->Lookup(kBobToken).ok());
  // Another size, so the change is seen even within one mtime tick.
  Write(path, Line("bob", kBobToken) + "# alice revoked\n");
  ASSERT_TRUE((*table)->Reload().ok());
  EXPECT_EQ(*(*table)->Lookup(kBobToken), "bob");
  EXPECT_FALSE((*table)->Lookup(kAliceToken).ok());
  Write(path, absl::StrCat("bob:", kBobToken, "\n"));  // a token in clear
  absl::Status s = (*table)->Reload();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("test_file"), absl::string_view::npos) << s;
  EXPECT_EQ(*(*table)->Lookup(kBobToken), "bob");
  std::remove(path.c_str());
  EXPECT_EQ((*table)->Reload().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*(*table)->Lookup(kBobToken), "bob");
  EXPECT_EQ(TokenTable::FromFile(path, "test_file").status().code(), absl::StatusCode::kNotFound);
  Write(path, "# nobody\n");
  EXPECT_EQ(TokenTable::FromFile(path, "test_file").status().code(),
            absl::StatusCode::kInvalidArgument);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace krul::rpc
