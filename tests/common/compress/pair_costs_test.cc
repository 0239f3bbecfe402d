// PlanProbe measures what a stored plan costs the next tokens, with the
// model itself.
#include "krul/compress/pair_costs.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "krul/engine/engine_cpu.h"
#include "krul/model/model.h"

namespace krul {
namespace {

class PairCostsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_.dim = 64;
    config_.hidden_dim = 128;
    config_.n_layers = 4;
    config_.n_heads = 4;
    config_.n_kv_heads = 2;
    config_.vocab_size = 64;
    config_.seq_len = 96;
    model_ = *MakeSyntheticModel(config_, 5);
    engine_ = *Engine::Create(*model_, {});
    std::mt19937 rng(3);
    for (int i = 0; i < 40; ++i) tokens_.push_back(std::uniform_int_distribution<int>(0, 63)(rng));
    cache_ = std::make_unique<KvCache>(*KvCache::Create(config_, config_.seq_len));
    std::vector<float> logits(config_.vocab_size);
    ASSERT_TRUE(engine_->Forward(*cache_, std::span(tokens_).subspan(0, 30), 0, logits).ok());
  }
  std::span<const int> Continuation() const { return std::span(tokens_).subspan(30); }

  ModelConfig config_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Engine> engine_;
  std::vector<int> tokens_;
  std::unique_ptr<KvCache> cache_;
};

TEST_F(PairCostsTest, UncompressedCostsNothing) {
  auto probe = PlanProbe::Create(*engine_, *cache_, 30, Continuation());
  ASSERT_TRUE(probe.ok()) << probe.status();
  auto q = probe->Measure(CompressionPlan::Uncompressed(4));
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->kl, 0.0);
  EXPECT_EQ(q->agreement, 1.0);
}

TEST_F(PairCostsTest, EveryPairIsMeasuredLikeItsOwnPlan) {
  auto probe = PlanProbe::Create(*engine_, *cache_, 30, Continuation());
  ASSERT_TRUE(probe.ok());
  auto costs = probe->MeasureEveryPair();
  ASSERT_TRUE(costs.ok()) << costs.status();
  ASSERT_EQ(costs->size(), 16u);
  for (int a = 0; a < 4; ++a) {
    EXPECT_EQ((*costs)[a * 4 + a], 0.0);
    for (int b = a + 1; b < 4; ++b) {
      EXPECT_GT((*costs)[a * 4 + b], 0.0) << a << "," << b;
      EXPECT_EQ((*costs)[a * 4 + b], (*costs)[b * 4 + a]);
      CompressionPlan one = CompressionPlan::Uncompressed(4);
      one.pairs.push_back({a, b, 0});
      one.target_ratio = one.ratio();
      auto q = probe->Measure(one);
      ASSERT_TRUE(q.ok());
      EXPECT_DOUBLE_EQ(q->kl, (*costs)[a * 4 + b]);
    }
  }
}

TEST_F(PairCostsTest, RejectsWhatDoesNotFit) {
  EXPECT_EQ(PlanProbe::Create(*engine_, *cache_, 0, Continuation()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanProbe::Create(*engine_, *cache_, 30, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<int> long_input(80, 1);
  EXPECT_EQ(PlanProbe::Create(*engine_, *cache_, 30, long_input).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto other = KvCache::Create(3, config_.kv_dim(), 64);
  EXPECT_EQ(PlanProbe::Create(*engine_, *other, 30, Continuation()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace krul
