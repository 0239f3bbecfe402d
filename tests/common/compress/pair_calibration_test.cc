// The calibration set: round trip of its file form, nearest-reference cost
// prediction, mean costs and edge-mass quantiles.
#include "krul/compress/pair_calibration.h"

#include <cmath>
#include <string>

#include "gtest/gtest.h"

namespace krul {
namespace {

constexpr int kL = 4;

std::vector<double> Sym(double base, double slope) {
  std::vector<double> m(kL * kL, 0.0);
  for (int a = 0; a < kL; ++a) {
    for (int b = a + 1; b < kL; ++b) m[a * kL + b] = m[b * kL + a] = base + slope * (a * kL + b);
  }
  return m;
}

// Group "up": merge errors grow with the pair index; "down": they shrink.
PairReference Ref(const std::string& id, bool up, double cost_base, double jitter) {
  PairReference r;
  r.id = id;
  r.domain = up ? "up" : "down";
  r.merge_key = up ? Sym(0.1 + jitter, 0.05) : Sym(1.0 + jitter, -0.05);
  r.merge_value = up ? Sym(0.2, 0.04 + jitter) : Sym(1.2, -0.04 - jitter);
  r.cost = Sym(cost_base, up ? 0.01 : -0.01);
  r.edge_mass = {0.1, 0.2, 0.3, up ? 0.9 : 0.4};
  return r;
}

PairCalibration Sample() {
  PairCalibration c(kL);
  EXPECT_TRUE(c.Add(Ref("u1", true, 1.0, 0.0)).ok());
  EXPECT_TRUE(c.Add(Ref("d1", false, 5.0, 0.0)).ok());
  EXPECT_TRUE(c.Add(Ref("u2", true, 2.0, 0.01)).ok());
  EXPECT_TRUE(c.Add(Ref("d2", false, 6.0, 0.01)).ok());
  return c;
}

TEST(PairCalibrationTest, RoundTripsThroughText) {
  const PairCalibration c = Sample();
  auto back = ParsePairCalibration(SerializePairCalibration(c));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->references().size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const PairReference &a = c.references()[i], &b = back->references()[i];
    EXPECT_EQ(a.id, b.id);
    EXPECT_EQ(a.domain, b.domain);
    EXPECT_EQ(a.merge_key, b.merge_key);
    EXPECT_EQ(a.merge_value, b.merge_value);
    EXPECT_EQ(a.cost, b.cost);
    EXPECT_EQ(a.edge_mass, b.edge_mass);
  }
}

TEST(PairCalibrationTest, PredictsFromTheNearestReferences) {
  const PairCalibration c = Sample();
  MergeErrors own;
  own.n_layers = kL;
  own.key = Sym(0.12, 0.05);
  own.value = Sym(0.21, 0.041);
  auto p = c.Predict(own, 2);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->domains, (std::vector<std::string>{"up", "up"}));
  // The mean of u1's and u2's costs.
  EXPECT_NEAR(p->cost[0 * kL + 1], 0.5 * (1.0 + 0.01 * 1 + 2.0 + 0.01 * 1), 1e-12);
  // Leaving u1 out, k = 1 gives u2.
  p = c.Predict(own, 1, "u2");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->neighbours, (std::vector<std::string>{"u1"}));
  EXPECT_EQ(p->cost, c.references()[0].cost);
  // k beyond the set averages everything.
  p = c.Predict(own, 10);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->neighbours.size(), 4u);
  own.key = Sym(1.0, -0.05);
  own.value = Sym(1.2, -0.04);
  p = c.Predict(own, 2);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->domains, (std::vector<std::string>{"down", "down"}));
  EXPECT_EQ(c.Predict(own, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PairCalibration(kL).Predict(own, 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(PairCalibrationTest, MeanCostAndEdgeMassQuantile) {
  const PairCalibration c = Sample();
  auto mean = c.MeanCost();
  ASSERT_TRUE(mean.ok());
  EXPECT_NEAR((*mean)[0 * kL + 1], (1.0 + 5.0 + 2.0 + 6.0) / 4, 1e-12);
  mean = c.MeanCost("d2");
  ASSERT_TRUE(mean.ok());
  EXPECT_NEAR((*mean)[0 * kL + 1], (1.0 + 0.01 + 5.0 - 0.01 + 2.0 + 0.01) / 3, 1e-12);
  // 16 masses: 0.1 x4, 0.2 x4, 0.3 x4, 0.4 x2, 0.9 x2.
  EXPECT_NEAR(*c.EdgeMassQuantile(0), 0.1, 1e-12);
  EXPECT_NEAR(*c.EdgeMassQuantile(1), 0.9, 1e-12);
  EXPECT_NEAR(*c.EdgeMassQuantile(13.0 / 15), 0.4, 1e-12);
  EXPECT_EQ(c.EdgeMassQuantile(1.5).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PairCalibrationTest, RejectsMalformedInput) {
  PairCalibration c(kL);
  PairReference r = Ref("x", true, 1, 0);
  r.cost.pop_back();
  EXPECT_EQ(c.Add(r).code(), absl::StatusCode::kInvalidArgument);
  r = Ref("has space", true, 1, 0);
  EXPECT_EQ(c.Add(r).code(), absl::StatusCode::kInvalidArgument);
  r = Ref("x", true, 1, 0);
  r.edge_mass[0] = -1;
  EXPECT_EQ(c.Add(r).code(), absl::StatusCode::kInvalidArgument);
  const std::string good = SerializePairCalibration(Sample());
  EXPECT_FALSE(ParsePairCalibration("nonsense").ok());
  EXPECT_FALSE(ParsePairCalibration(good.substr(0, good.size() - 30)).ok());
  std::string bad = good;
  bad.replace(bad.find("cost "), 5, "cost x");
  EXPECT_FALSE(ParsePairCalibration(bad).ok());
}

}  // namespace
}  // namespace krul
