// MeasureMergeErrors predicts, without compressing, exactly the error the
// compressor's merge makes on a cache.
#include "krul/compress/merge_error.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "krul/compress/compression_plan.h"
#include "krul/compress/compressor.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"

namespace krul {
namespace {

ModelConfig Config(int layers) {
  ModelConfig c;
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_layers = layers;
  c.n_heads = 4;
  c.n_kv_heads = 2;  // head_dim 16, kv_dim 32
  c.vocab_size = 128;
  c.seq_len = 64;
  return c;
}

// Layer l's rows = shared direction + noise growing with l, so pairs of
// nearby layers merge better than distant ones.
KvCache LayeredCache(const ModelConfig& config, int n, uint32_t seed) {
  KvCache cache = *KvCache::Create(config, config.seq_len);
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> base(2 * config.kv_dim());
  for (int t = 0; t < n; ++t) {
    for (float& x : base) x = g(rng);
    for (int l = 0; l < config.n_layers; ++l) {
      for (int i = 0; i < config.kv_dim(); ++i) {
        cache.key(l, t)[i] = base[i] + 0.3f * l * g(rng);
        cache.value(l, t)[i] = base[config.kv_dim() + i] + 0.3f * l * g(rng);
      }
    }
  }
  return cache;
}

// Relative squared error of layers a and b's K (tensor 0) or V (1) after
// compressing `cache` with the pair (a, b) shared and decompressing it.
double ActualRelativeError(const KvCache& cache, const KvShape& shape, int n, int a, int b,
                           int tensor, double retain_angle) {
  CompressionPlan plan = CompressionPlan::Uncompressed(shape.n_layers);
  plan.pairs.push_back({a, b, 0});
  plan.target_ratio = plan.ratio();
  CompressorOptions options;
  options.retain_angle_degrees = retain_angle;
  auto kv = CompressKv(cache, shape, plan, n, {}, options);
  EXPECT_TRUE(kv.ok()) << kv.status();
  KvCache back = *KvCache::Create(shape.n_layers, shape.kv_dim(), cache.capacity());
  EXPECT_TRUE(kv->DecompressAll(back).ok());
  double err = 0, energy = 0;
  for (int l : {a, b}) {
    for (int t = 0; t < n; ++t) {
      const float* x = tensor == 0 ? cache.key(l, t) : cache.value(l, t);
      const float* y = tensor == 0 ? back.key(l, t) : back.value(l, t);
      for (int i = 0; i < shape.kv_dim(); ++i) {
        err += (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
        energy += static_cast<double>(x[i]) * x[i];
      }
    }
  }
  return err / energy;
}

TEST(MergeErrorTest, MatchesWhatTheCompressorDoes) {
  const ModelConfig config = Config(5);
  const KvShape shape = KvShape::FromConfig(config);
  const int n = 40;
  const KvCache cache = LayeredCache(config, n, 7);
  auto errors = MeasureMergeErrors(cache, shape, 0, n);
  ASSERT_TRUE(errors.ok()) << errors.status();
  for (int a = 0; a < 5; ++a) {
    for (int b = a + 1; b < 5; ++b) {
      EXPECT_NEAR(errors->Key(a, b), ActualRelativeError(cache, shape, n, a, b, 0, 180), 1e-5)
          << a << "," << b;
      EXPECT_NEAR(errors->Value(a, b), ActualRelativeError(cache, shape, n, a, b, 1, 180), 1e-5)
          << a << "," << b;
      EXPECT_EQ(errors->Key(a, b), errors->Key(b, a));
      EXPECT_EQ(errors->retained_units[a * 5 + b], 0);
    }
  }
  // Noise grows with depth: (0,1) merges better than (0,4) and (1,2).
  EXPECT_LT(errors->Both(0, 1), errors->Both(0, 4));
  EXPECT_LT(errors->Both(0, 1), errors->Both(1, 2));
}

TEST(MergeErrorTest, RetainedUnitsCostNothingAndAreCounted) {
  const ModelConfig config = Config(4);
  const KvShape shape = KvShape::FromConfig(config);
  const int n = 30;
  const KvCache cache = LayeredCache(config, n, 11);
  MergeErrorOptions options;
  options.retain_angle_degrees = 40;
  auto errors = MeasureMergeErrors(cache, shape, 0, n, options);
  ASSERT_TRUE(errors.ok()) << errors.status();
  auto unretained = MeasureMergeErrors(cache, shape, 0, n);
  ASSERT_TRUE(unretained.ok());
  CompressionPlan plan = CompressionPlan::Uncompressed(4);
  plan.pairs.push_back({0, 3, 0});
  plan.target_ratio = plan.ratio();
  CompressorOptions co;
  co.retain_angle_degrees = 40;
  auto kv = CompressKv(cache, shape, plan, n, {}, co);
  ASSERT_TRUE(kv.ok());
  EXPECT_GT(kv->retained_units(), 0);
  EXPECT_EQ(errors->retained_units[0 * 4 + 3], static_cast<double>(kv->retained_units()));
  EXPECT_LT(errors->Key(0, 3), unretained->Key(0, 3));
  EXPECT_NEAR(errors->Key(0, 3), ActualRelativeError(cache, shape, n, 0, 3, 0, 40), 1e-5);
  EXPECT_NEAR(errors->Value(0, 3), ActualRelativeError(cache, shape, n, 0, 3, 1, 40), 1e-5);
}

TEST(MergeErrorTest, TokenWeightsSelectTokens) {
  const ModelConfig config = Config(3);
  const KvShape shape = KvShape::FromConfig(config);
  const int n = 20;
  const KvCache cache = LayeredCache(config, n, 3);
  // Weight 1 on tokens [5, 12) of every layer, 0 elsewhere = the subrange.
  std::vector<double> w(3 * n, 0.0);
  for (int l = 0; l < 3; ++l) {
    for (int t = 5; t < 12; ++t) w[l * n + t] = 1.0;
  }
  MergeErrorOptions options;
  options.token_weights = w;
  auto weighted = MeasureMergeErrors(cache, shape, 0, n, options);
  auto sub = MeasureMergeErrors(cache, shape, 5, 12);
  ASSERT_TRUE(weighted.ok() && sub.ok());
  for (int a = 0; a < 3; ++a) {
    for (int b = a + 1; b < 3; ++b) {
      EXPECT_NEAR(weighted->Key(a, b), sub->Key(a, b), 1e-9);
      EXPECT_NEAR(weighted->Value(a, b), sub->Value(a, b), 1e-9);
    }
  }
}

TEST(MergeErrorTest, IdenticalLayersCostNothingOrthogonalOnesTheHalfAngle) {
  const ModelConfig config = Config(3);
  const KvShape shape = KvShape::FromConfig(config);
  KvCache cache = *KvCache::Create(config, config.seq_len);
  for (int t = 0; t < 4; ++t) {
    for (int i = 0; i < shape.kv_dim(); ++i) {
      // Per head: layers 0 and 1 along e_0, layer 2 along e_1.
      const int j = i % shape.head_dim;
      cache.key(0, t)[i] = cache.key(1, t)[i] = cache.value(0, t)[i] = cache.value(1, t)[i] =
          j == 0 ? 1.0f + t : 0.0f;
      cache.key(2, t)[i] = cache.value(2, t)[i] = j == 1 ? 2.0f : 0.0f;
    }
  }
  auto errors = MeasureMergeErrors(cache, shape, 0, 4);
  ASSERT_TRUE(errors.ok());
  EXPECT_EQ(errors->Both(0, 1), 0.0);
  // 90 degrees: each row restores at 45 degrees: 2 - 2 cos(pi / 4).
  EXPECT_NEAR(errors->Key(0, 2), 2 - std::sqrt(2.0), 1e-6);
  EXPECT_NEAR(errors->Value(1, 2), 2 - std::sqrt(2.0), 1e-6);
}

TEST(MergeErrorTest, RejectsBadRequests) {
  const ModelConfig config = Config(3);
  const KvShape shape = KvShape::FromConfig(config);
  const KvCache cache = LayeredCache(config, 10, 1);
  EXPECT_EQ(MeasureMergeErrors(cache, shape, 5, 5).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MeasureMergeErrors(cache, shape, 0, 65).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MeasureMergeErrors(cache, KvShape{4, 2, 16}, 0, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  MergeErrorOptions options;
  std::vector<double> w(7, 1.0);
  options.token_weights = w;
  EXPECT_EQ(MeasureMergeErrors(cache, shape, 0, 10, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = {};
  options.retain_angle_degrees = 200;
  EXPECT_EQ(MeasureMergeErrors(cache, shape, 0, 10, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace krul
