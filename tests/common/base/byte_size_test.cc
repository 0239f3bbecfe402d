#include "krul/base/byte_size.h"

#include <cstdint>
#include <string>

#include "gtest/gtest.h"

namespace krul {
namespace {

TEST(ByteSizeTest, ParsesPlainAndSuffixedCounts) {
  EXPECT_EQ(*ParseByteSize("4096"), 4096u);
  EXPECT_EQ(*ParseByteSize("0"), 0u);
  EXPECT_EQ(*ParseByteSize("64K"), 65536u);
  EXPECT_EQ(*ParseByteSize("64KiB"), 65536u);
  EXPECT_EQ(*ParseByteSize("64kb"), 65536u);
  EXPECT_EQ(*ParseByteSize("512M"), 536870912u);
  EXPECT_EQ(*ParseByteSize("1G"), 1073741824u);
  EXPECT_EQ(*ParseByteSize(" 2T "), 2199023255552u);
  EXPECT_EQ(*ParseByteSize("7B"), 7u);
  EXPECT_EQ(*ParseByteSize("16777215T"), 18446742974197923840u);  // (2^24 - 1) << 40
}

TEST(ByteSizeTest, RejectsWhatIsNotASize) {
  for (const char* bad : {"", "K", "B", "-5", "1.5G", "12Q", "G1", "lots"}) {
    absl::StatusOr<uint64_t> v = ParseByteSize(bad);
    EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << "'" << bad << "'";
  }
  absl::StatusOr<uint64_t> big = ParseByteSize("16777216T");  // 2^64
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(big.status().message().find("overflows"), std::string::npos);
  EXPECT_FALSE(ParseByteSize("99999999999999999999").ok());
}

TEST(ByteSizeTest, FormatsTheShortestExactSpelling) {
  EXPECT_EQ(FormatByteSize(0), "0");
  EXPECT_EQ(FormatByteSize(4097), "4097");
  EXPECT_EQ(FormatByteSize(4096), "4K");
  EXPECT_EQ(FormatByteSize(536870912), "512M");
  EXPECT_EQ(FormatByteSize(1536u << 20), "1536M");
  EXPECT_EQ(FormatByteSize(1073741824), "1G");
  EXPECT_EQ(FormatByteSize(uint64_t{3} << 40), "3T");
}

TEST(ByteSizeTest, FlagRoundTrip) {
  ByteSize size;
  std::string error;
  ASSERT_TRUE(AbslParseFlag("256M", &size, &error)) << error;
  EXPECT_EQ(size.bytes, 268435456u);
  EXPECT_EQ(AbslUnparseFlag(size), "256M");
  EXPECT_FALSE(AbslParseFlag("256Q", &size, &error));
  EXPECT_NE(error.find("256Q"), std::string::npos) << error;
  EXPECT_EQ(size.bytes, 268435456u);  // unchanged on error
  EXPECT_EQ(ByteSize(1024), ByteSize(1024));
}

}  // namespace
}  // namespace krul
