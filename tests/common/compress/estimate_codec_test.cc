// A similarity estimate survives its byte form, damaged bytes are refused,
// and the carrying rule decays older turns as documented.
#include "krul/compress/estimate_codec.h"

#include <string>

#include "gtest/gtest.h"

namespace krul {
namespace {

SimilarityEstimate Sample(int L, double scale) {
  SimilarityEstimate e = SimilarityEstimate::Empty(L, 0.1);
  for (int a = 0; a < L; ++a) {
    for (int b = a + 1; b < L; ++b) {
      const double p = scale * (a + 1) * 0.5 + b, d = scale * 0.25 * (b - a);
      e.prefill_distance[a * L + b] = e.prefill_distance[b * L + a] = p;
      e.decode_distance[a * L + b] = e.decode_distance[b * L + a] = d;
      e.distance[a * L + b] = e.distance[b * L + a] = p + d;
    }
    e.first_mass_sum[a] = scale * (a + 1);
    e.last_mass_sum[a] = scale * 2 * (a + 1);
    e.mass_weight[a] = scale * 10;
  }
  e.rows_represented = scale * 40;
  e.rows_compared = 40;
  e.prefill_tokens = 7;
  e.decode_tokens = 3;
  return e;
}

TEST(EstimateCodecTest, RoundTrips) {
  const SimilarityEstimate e = Sample(5, 1.5);
  auto bytes = SerializeEstimate(e);
  ASSERT_TRUE(bytes.ok());
  auto back = ParseEstimate(*bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->n_layers, 5);
  EXPECT_EQ(back->distance, e.distance);
  EXPECT_EQ(back->prefill_distance, e.prefill_distance);
  EXPECT_EQ(back->decode_distance, e.decode_distance);
  EXPECT_EQ(back->first_mass_sum, e.first_mass_sum);
  EXPECT_EQ(back->last_mass_sum, e.last_mass_sum);
  EXPECT_EQ(back->mass_weight, e.mass_weight);
  EXPECT_EQ(back->rows_represented, e.rows_represented);
  EXPECT_EQ(back->prefill_tokens, 7);
  EXPECT_EQ(back->decode_tokens, 3);
  EXPECT_EQ(back->edge_fraction, 0.1);
}

TEST(EstimateCodecTest, DamageIsDataLoss) {
  const std::string bytes = *SerializeEstimate(Sample(4, 1));
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= 0x10;
    auto r = ParseEstimate(bad);
    ASSERT_FALSE(r.ok()) << i;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << i;
  }
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_EQ(ParseEstimate(bytes.substr(0, n)).status().code(), absl::StatusCode::kDataLoss) << n;
  }
  EXPECT_EQ(ParseEstimate(bytes + "x").status().code(), absl::StatusCode::kDataLoss);
}

TEST(EstimateCodecTest, MalformedEstimateIsRefused) {
  SimilarityEstimate e = Sample(3, 1);
  e.mass_weight.pop_back();
  EXPECT_EQ(SerializeEstimate(e).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EstimateCodecTest, CarryDecaysTheTurnsBefore) {
  const SimilarityEstimate before = Sample(4, 2), turn = Sample(4, 1);
  auto all = CarryEstimate(before, turn, 1.0);
  auto last = CarryEstimate(before, turn, 0.0);
  auto half = CarryEstimate(before, turn, 0.5);
  ASSERT_TRUE(all.ok() && last.ok() && half.ok());
  for (int a = 0; a < 4; ++a) {
    for (int b = 0; b < 4; ++b) {
      EXPECT_DOUBLE_EQ(all->Distance(a, b), before.Distance(a, b) + turn.Distance(a, b));
      EXPECT_DOUBLE_EQ(last->Distance(a, b), turn.Distance(a, b));
      EXPECT_DOUBLE_EQ(half->Distance(a, b), 0.5 * before.Distance(a, b) + turn.Distance(a, b));
    }
    EXPECT_DOUBLE_EQ(last->EdgeMass(a), turn.EdgeMass(a));
  }
  EXPECT_DOUBLE_EQ(half->rows_represented, 0.5 * before.rows_represented + turn.rows_represented);
  EXPECT_EQ(half->prefill_tokens, before.prefill_tokens + turn.prefill_tokens);
  EXPECT_EQ(CarryEstimate(before, turn, 1.5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CarryEstimate(before, Sample(3, 1), 0.5).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace krul
