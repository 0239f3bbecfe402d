#include "krul/base/dtype.h"

#include <bit>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace krul {
namespace {

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeName(DType::kBF16), "bf16");
}

// Bit patterns from the IEEE 754 binary16 definition.
TEST(DTypeTest, Fp16KnownValues) {
  EXPECT_EQ(Fp32ToFp16(1.0f), 0x3C00);
  EXPECT_EQ(Fp32ToFp16(-2.0f), 0xC000);
  EXPECT_EQ(Fp32ToFp16(65504.0f), 0x7BFF);                          // largest finite
  EXPECT_EQ(Fp32ToFp16(65520.0f), 0x7C00);                          // rounds to infinity
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.0f, -24)), 0x0001);             // smallest subnormal
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.0f, -14)), 0x0400);             // smallest normal
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.0f, -26)), 0x0000);             // underflows to zero
  EXPECT_EQ(Fp32ToFp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // tie -> even
  EXPECT_EQ(Fp32ToFp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // tie -> even (up)
  EXPECT_EQ(Fp32ToFp16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_TRUE(std::isnan(Fp16ToFp32(Fp32ToFp16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(Fp16ToFp32(0x3555), 0.333251953125f);
  EXPECT_EQ(Fp16ToFp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(Fp16ToFp32(0x8000), -0.0f);
  EXPECT_TRUE(std::signbit(Fp16ToFp32(0x8000)));
}

TEST(DTypeTest, EveryFp16ValueRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = Fp16ToFp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(Fp32ToFp16(f), h) << std::hex << h;
  }
}

TEST(DTypeTest, Bf16KnownValuesAndRounding) {
  EXPECT_EQ(Fp32ToBf16(1.0f), 0x3F80);
  EXPECT_EQ(Fp32ToBf16(-2.0f), 0xC000);
  EXPECT_EQ(Bf16ToFp32(0x3F80), 1.0f);
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even.
  EXPECT_EQ(Fp32ToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(Fp32ToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_TRUE(std::isnan(Bf16ToFp32(Fp32ToBf16(std::numeric_limits<float>::quiet_NaN()))));
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = Bf16ToFp32(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(Fp32ToBf16(f), b);
  }
}

TEST(DTypeTest, BufferConversionsRoundTripWithinPrecision) {
  std::vector<float> src = {0.1f, -3.5f, 1000.25f, 1e-3f};
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    std::vector<uint8_t> packed(src.size() * DTypeSize(t));
    std::vector<float> back(src.size());
    ConvertFromFp32(src.data(), t, packed.data(), src.size());
    ConvertToFp32(t, packed.data(), back.data(), src.size());
    const double tolerance = t == DType::kF32 ? 0 : t == DType::kF16 ? 1e-3 : 8e-3;
    for (size_t i = 0; i < src.size(); ++i) {
      EXPECT_NEAR(back[i], src[i], std::abs(src[i]) * tolerance) << DTypeName(t);
    }
  }
}

TEST(DTypeTest, ParseDTypeReadsTheNames) {
  EXPECT_EQ(*ParseDType("f32"), DType::kF32);
  EXPECT_EQ(*ParseDType("f16"), DType::kF16);
  EXPECT_EQ(*ParseDType("bf16"), DType::kBF16);
  for (const char* bad : {"", "f64", "F32", "fp16", "bf16 "}) {
    absl::StatusOr<DType> d = ParseDType(bad);
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(d.status().message().find("expected f32, f16 or bf16"), std::string::npos);
  }
}

}  // namespace
}  // namespace krul
