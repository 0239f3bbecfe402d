#include "krul/base/byte_order.h"

#include <cstdint>
#include <string>

#include "gtest/gtest.h"

namespace krul::internal {
namespace {

// Expected bytes are written out by hand: little-endian puts the least
// significant byte first, big-endian the most significant.
TEST(ByteOrderTest, LittleEndianLayout) {
  char buf[8] = {};
  Put32(buf, 0x11223344u);
  EXPECT_EQ(std::string(buf, 4), std::string("\x44\x33\x22\x11", 4));
  Put16(buf, 0xABCDu);
  EXPECT_EQ(std::string(buf, 2), std::string("\xCD\xAB", 2));
  Put64(buf, 0x0102030405060708ull);
  EXPECT_EQ(std::string(buf, 8), std::string("\x08\x07\x06\x05\x04\x03\x02\x01", 8));

  const char bytes[] = "\x08\x07\x06\x05\x04\x03\x02\x81";
  EXPECT_EQ(Get64(bytes), 0x8102030405060708ull);  // high bit survives
  EXPECT_EQ(Get32(bytes), 0x05060708u);
  EXPECT_EQ(Get16(bytes + 6), 0x8102u);
  EXPECT_EQ(GetLittleEndian(bytes, 3), 0x060708u);
}

TEST(ByteOrderTest, AppendMatchesPut) {
  std::string out = "x";
  Append32(out, 0xDEADBEEFu);
  Append16(out, 0x0102u);
  Append64(out, 0xFFu);
  EXPECT_EQ(out, std::string("x\xEF\xBE\xAD\xDE\x02\x01\xFF\0\0\0\0\0\0\0", 15));
  EXPECT_EQ(Get32(out.data() + 1), 0xDEADBEEFu);
  EXPECT_EQ(Get64(out.data() + 7), 0xFFu);
}

TEST(ByteOrderTest, BigEndianSortsNumerically) {
  std::string a, b;
  AppendBigEndian(a, 0x0102u, 2);
  EXPECT_EQ(a, std::string("\x01\x02", 2));
  EXPECT_EQ(GetBigEndian(a.data(), 2), 0x0102u);

  // 255 < 256 as numbers, and so must the encoded keys compare bytewise.
  a.clear();
  AppendBigEndian(a, 255, 4);
  AppendBigEndian(b, 256, 4);
  EXPECT_EQ(a, std::string("\0\0\0\xFF", 4));
  EXPECT_LT(a, b);
  EXPECT_EQ(GetBigEndian(b.data(), 4), 256u);
}

TEST(ByteOrderTest, UnalignedAccess) {
  char buf[16] = {};
  for (int offset = 0; offset < 8; ++offset) {
    Put64(buf + offset, 0x1122334455667788ull + offset);
    EXPECT_EQ(Get64(buf + offset), 0x1122334455667788ull + offset) << offset;
  }
}

}  // namespace
}  // namespace krul::internal
