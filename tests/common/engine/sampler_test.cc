#include "krul/engine/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace krul {
namespace {

TEST(SamplerTest, ArgMaxTakesTheFirstOfTies) {
  EXPECT_EQ(ArgMax(std::vector<float>{1, 3, 3, 2}), 1);
  EXPECT_EQ(ArgMax(std::vector<float>{}), -1);
}

TEST(SamplerTest, GreedyAtTemperatureZero) {
  auto s = Sampler::Create({.temperature = 0.0f});
  ASSERT_TRUE(s.ok());
  std::vector<float> logits = {0.1f, 5.0f, -2.0f};
  EXPECT_EQ(s->Sample(logits), 1);
}

TEST(SamplerTest, FrequenciesFollowTheSoftmax) {
  auto s = Sampler::Create({.temperature = 1.0f, .top_p = 1.0f, .seed = 7});
  ASSERT_TRUE(s.ok());
  const std::vector<float> logits = {0.0f, std::log(2.0f), std::log(5.0f)};  // p = 1/8, 2/8, 5/8
  std::vector<int> counts(3, 0);
  const int n = 40000;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = logits;
    counts[s->Sample(l)]++;
  }
  EXPECT_NEAR(counts[0] / double(n), 0.125, 0.01);
  EXPECT_NEAR(counts[1] / double(n), 0.25, 0.01);
  EXPECT_NEAR(counts[2] / double(n), 0.625, 0.01);
}

TEST(SamplerTest, TopPKeepsOnlyTheNucleus) {
  auto s = Sampler::Create({.temperature = 1.0f, .top_p = 0.5f, .seed = 1});
  ASSERT_TRUE(s.ok());
  // p = 0.6, 0.3, 0.1: the nucleus for 0.5 is {0} alone.
  const std::vector<float> logits = {std::log(0.6f), std::log(0.3f), std::log(0.1f)};
  for (int i = 0; i < 200; ++i) {
    std::vector<float> l = logits;
    ASSERT_EQ(s->Sample(l), 0);
  }
}

TEST(SamplerTest, SameSeedSameChoices) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = std::sin(i * 1.7f);
  auto draw = [&](uint64_t seed) {
    auto s = Sampler::Create({.temperature = 0.8f, .top_p = 0.9f, .seed = seed});
    std::vector<int> picks;
    for (int i = 0; i < 30; ++i) {
      std::vector<float> l = logits;
      picks.push_back(s->Sample(l));
    }
    return picks;
  };
  EXPECT_EQ(draw(5), draw(5));
  EXPECT_NE(draw(5), draw(6));
}

TEST(SamplerTest, RejectsBadOptions) {
  EXPECT_FALSE(Sampler::Create({.temperature = -1.0f}).ok());
  EXPECT_FALSE(Sampler::Create({.temperature = NAN}).ok());
  EXPECT_FALSE(Sampler::Create({.temperature = 1.0f, .top_p = 0.0f}).ok());
  EXPECT_FALSE(Sampler::Create({.temperature = 1.0f, .top_p = 1.5f}).ok());
}

}  // namespace
}  // namespace krul
