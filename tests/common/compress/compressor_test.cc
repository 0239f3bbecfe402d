#include "krul/compress/compressor.h"

#include <cmath>
#include <cstring>
#include <numbers>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "krul/compress/compression_plan.h"
#include "krul/engine/engine_cpu.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"

namespace krul {
namespace {

// head_dim 16: kv_dim = 16 * kv_heads.
ModelConfig ConfigFor(int layers, int kv_heads, int heads = 4, int dim = 64) {
  ModelConfig c;
  c.dim = dim;
  c.hidden_dim = 96;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.vocab_size = 128;
  c.seq_len = 256;
  return c;
}

// A cache whose first `n` positions hold N(0, 1) values.
KvCache RandomCache(const ModelConfig& config, int n, uint32_t seed) {
  auto cache = KvCache::Create(config, config.seq_len);
  EXPECT_TRUE(cache.ok());
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int l = 0; l < config.n_layers; ++l) {
    for (int t = 0; t < n; ++t) {
      for (int i = 0; i < config.kv_dim(); ++i) {
        cache->key(l, t)[i] = g(rng);
        cache->value(l, t)[i] = g(rng);
      }
    }
  }
  return std::move(*cache);
}

double NormOf(const float* x, int d) {
  double s = 0;
  for (int i = 0; i < d; ++i) s += static_cast<double>(x[i]) * x[i];
  return std::sqrt(s);
}

double AngleOf(const float* x, const float* y, int d) {
  double dot = 0;
  for (int i = 0; i < d; ++i) dot += static_cast<double>(x[i]) * y[i];
  return std::acos(std::clamp(dot / (NormOf(x, d) * NormOf(y, d)), -1.0, 1.0));
}

CompressionPlan PlanWith(int n_layers, std::vector<LayerPair> pairs) {
  CompressionPlan p = CompressionPlan::Uncompressed(n_layers);
  p.pairs = std::move(pairs);
  p.target_ratio = p.ratio();
  return p;
}

// Row pointers of (layer, pos, K|V).
const float* RowOf(const KvCache& c, int layer, int pos, int kv) {
  return kv == 0 ? c.key(layer, pos) : c.value(layer, pos);
}

TEST(SlerpTest, KnownValues) {
  const float e1[2] = {1, 0}, e2[2] = {0, 1};
  float out[2];
  Slerp(e1, e2, 2, 0.5, out);
  EXPECT_NEAR(out[0], std::sqrt(0.5), 1e-7);
  EXPECT_NEAR(out[1], std::sqrt(0.5), 1e-7);
  Slerp(e1, e2, 2, 0.0, out);
  EXPECT_NEAR(out[0], 1, 1e-7);
  EXPECT_NEAR(out[1], 0, 1e-7);
  Slerp(e1, e2, 2, 1.0, out);
  EXPECT_NEAR(out[0], 0, 1e-7);
  EXPECT_NEAR(out[1], 1, 1e-7);
  // t = 1/3 of a right angle: 30 degrees from e1.
  Slerp(e1, e2, 2, 1.0 / 3, out);
  EXPECT_NEAR(out[0], std::cos(std::numbers::pi / 6), 1e-7);
  EXPECT_NEAR(out[1], std::sin(std::numbers::pi / 6), 1e-7);
  // Identical vectors give themselves.
  const float u[3] = {0.6f, 0.0f, 0.8f};
  float out3[3];
  Slerp(u, u, 3, 0.5, out3);
  for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(out3[i], u[i]);
  // Opposite vectors have no unique midpoint: the first is returned.
  const float v[2] = {-1, 0};
  Slerp(e1, v, 2, 0.5, out);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 0.0f);
}

// For a merged unit with angle W between x_a and x_b, MiniCache restores
// r_a = |x_a| m with m the unit bisector, so (derived by hand):
//   |r_a| = |x_a|, angle(r_a, x_a) = W / 2, |x_a - r_a| = 2 |x_a| sin(W / 4),
// and r_a, r_b point the same way.
TEST(CompressorTest, MergedPairMeetsSlerpBounds) {
  const ModelConfig config = ConfigFor(3, 2);
  const KvShape shape = KvShape::FromConfig(config);
  const int n = 40, d = shape.head_dim;
  KvCache cache = RandomCache(config, n, 1);
  auto kv = CompressKv(cache, shape, PlanWith(3, {{0, 2, 0}}), n, {});
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_EQ(kv->retained_units(), 0);
  auto out = KvCache::Create(config, config.seq_len);
  ASSERT_TRUE(out.ok());
  ASSERT_TRUE(kv->DecompressAll(*out).ok());
  for (int t = 0; t < n; ++t) {
    // Layer 1 is not shared: bit-exact.
    EXPECT_EQ(std::memcmp(out->key(1, t), cache.key(1, t), sizeof(float) * shape.kv_dim()), 0);
    EXPECT_EQ(std::memcmp(out->value(1, t), cache.value(1, t), sizeof(float) * shape.kv_dim()), 0);
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      for (int k = 0; k < 2; ++k) {
        const float* xa = RowOf(cache, 0, t, k) + h * d;
        const float* xb = RowOf(cache, 2, t, k) + h * d;
        const float* ra = RowOf(*out, 0, t, k) + h * d;
        const float* rb = RowOf(*out, 2, t, k) + h * d;
        const double w = AngleOf(xa, xb, d);
        EXPECT_NEAR(NormOf(ra, d), NormOf(xa, d), 1e-6 * NormOf(xa, d));
        EXPECT_NEAR(NormOf(rb, d), NormOf(xb, d), 1e-6 * NormOf(xb, d));
        EXPECT_NEAR(AngleOf(ra, xa, d), w / 2, 1e-3);
        EXPECT_NEAR(AngleOf(rb, xb, d), w / 2, 1e-3);
        EXPECT_LT(AngleOf(ra, rb, d), 1e-3);
        double err = 0;
        for (int i = 0; i < d; ++i) err += (xa[i] - ra[i]) * (xa[i] - ra[i]);
        EXPECT_LE(std::sqrt(err), 2 * NormOf(xa, d) * std::sin(w / 4) * (1 + 1e-4) + 1e-5);
      }
    }
  }
}

TEST(CompressorTest, IdenticalLayersRestoreExactly) {
  const ModelConfig config = ConfigFor(2, 4);
  const KvShape shape = KvShape::FromConfig(config);
  const int n = 17;
  KvCache cache = RandomCache(config, n, 2);
  for (int t = 0; t < n; ++t) {
    std::memcpy(cache.key(1, t), cache.key(0, t), sizeof(float) * shape.kv_dim());
    std::memcpy(cache.value(1, t), cache.value(0, t), sizeof(float) * shape.kv_dim());
  }
  auto kv = CompressKv(cache, shape, PlanWith(2, {{0, 1, 0}}), n, {});
  ASSERT_TRUE(kv.ok());
  auto out = KvCache::Create(config, config.seq_len);
  ASSERT_TRUE(kv->DecompressAll(*out).ok());
  for (int l = 0; l < 2; ++l) {
    for (int t = 0; t < n; ++t) {
      for (int i = 0; i < shape.kv_dim(); ++i) {
        EXPECT_NEAR(out->key(l, t)[i], cache.key(l, t)[i],
                    1e-6 * (1 + std::abs(cache.key(l, t)[i])));
        EXPECT_NEAR(out->value(l, t)[i], cache.value(l, t)[i],
                    1e-6 * (1 + std::abs(cache.value(l, t)[i])));
      }
    }
  }
  // One merged segment for the pair: per token 2 * kv_dim floats of
  // directions + 4 norms per KV head (hand count).
  EXPECT_EQ(kv->stored_bytes(), static_cast<size_t>(n) * (2 * 64 * 4 + 4 * 4 * 4));
}

// Ratio 1: no pairs; the compressed cache restores bit for bit and the model
// continues with identical logits.
TEST(CompressorTest, UncompressedPlanRestoresBitIdenticalAndSameLogits) {
  const ModelConfig config = ConfigFor(3, 2);
  auto model = MakeSyntheticModel(config, 5);
  ASSERT_TRUE(model.ok());
  auto engine = Engine::Create(**model, EngineOptions{.num_threads = 1});
  ASSERT_TRUE(engine.ok());
  auto original = KvCache::Create(config, 64);
  ASSERT_TRUE(original.ok());
  std::vector<int> tokens(56);
  for (int i = 0; i < 56; ++i) tokens[i] = (i * 13 + 5) % config.vocab_size;
  ASSERT_TRUE((*engine)->Forward(*original, std::span<const int>(tokens).first(50), 0, {}).ok());

  const KvShape shape = KvShape::FromConfig(config);
  CompressorOptions opts;
  opts.chunk_tokens = 16;
  auto kv = CompressKv(*original, shape, CompressionPlan::Uncompressed(3), 50, {}, opts);
  ASSERT_TRUE(kv.ok()) << kv.status();
  EXPECT_EQ(kv->stored_bytes(), kv->uncompressed_bytes());
  EXPECT_EQ(kv->segments.size(), 3u * 4u);  // [0,16) [16,32) [32,48) [48,50)
  auto restored = KvCache::Create(config, 64);
  ASSERT_TRUE(restored.ok());
  ASSERT_TRUE(kv->DecompressAll(*restored).ok());
  for (int l = 0; l < 3; ++l) {
    EXPECT_EQ(
        std::memcmp(restored->key(l, 0), original->key(l, 0), sizeof(float) * 50 * shape.kv_dim()),
        0);
    EXPECT_EQ(std::memcmp(restored->value(l, 0), original->value(l, 0),
                          sizeof(float) * 50 * shape.kv_dim()),
              0);
  }
  std::vector<float> a(config.vocab_size), b(config.vocab_size);
  for (int pos = 50; pos < 56; ++pos) {
    ASSERT_TRUE(
        (*engine)->Forward(*original, std::span<const int>(tokens).subspan(pos, 1), pos, a).ok());
    ASSERT_TRUE(
        (*engine)->Forward(*restored, std::span<const int>(tokens).subspan(pos, 1), pos, b).ok());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * a.size()), 0) << "pos " << pos;
  }
}

TEST(CompressorTest, RetentionKeepsWideAnglesExact) {
  const ModelConfig config = ConfigFor(2, 2);
  const KvShape shape = KvShape::FromConfig(config);
  const int n = 30, d = shape.head_dim;
  KvCache cache = RandomCache(config, n, 3);
  // Make some units nearly parallel so both kinds occur.
  for (int t = 0; t < n; t += 3) {
    for (int i = 0; i < shape.kv_dim(); ++i)
      cache.key(1, t)[i] = 2 * cache.key(0, t)[i] + 0.01f * i;
  }
  CompressorOptions opts;
  opts.retain_angle_degrees = 80;
  auto kv = CompressKv(cache, shape, PlanWith(2, {{0, 1, 0}}), n, {}, opts);
  ASSERT_TRUE(kv.ok());
  // Count the wide units independently.
  int64_t wide = 0;
  std::vector<uint8_t> is_wide;
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      for (int k = 0; k < 2; ++k) {
        const bool w = AngleOf(RowOf(cache, 0, t, k) + h * d, RowOf(cache, 1, t, k) + h * d, d) >
                       80 * std::numbers::pi / 180;
        is_wide.push_back(w);
        wide += w;
      }
    }
  }
  ASSERT_GT(wide, 0);
  ASSERT_LT(wide, static_cast<int64_t>(is_wide.size()));
  EXPECT_EQ(kv->retained_units(), wide);
  EXPECT_EQ(kv->stored_bytes(), n * MergedBytesPerToken(shape, DType::kF32) + wide * (4 + d * 4));
  auto out = KvCache::Create(config, config.seq_len);
  ASSERT_TRUE(kv->DecompressAll(*out).ok());
  size_t unit = 0;
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < shape.n_kv_heads; ++h) {
      for (int k = 0; k < 2; ++k, ++unit) {
        for (int l = 0; l < 2; ++l) {
          const float* x = RowOf(cache, l, t, k) + h * d;
          const float* r = RowOf(*out, l, t, k) + h * d;
          if (is_wide[unit]) {
            EXPECT_EQ(std::memcmp(x, r, sizeof(float) * d), 0) << "retained unit " << unit;
          } else {
            EXPECT_NEAR(NormOf(r, d), NormOf(x, d), 1e-5 * NormOf(x, d));
            EXPECT_LE(AngleOf(x, r, d), 40 * std::numbers::pi / 180 + 1e-3);
          }
        }
      }
    }
  }
  // Any sub-range decodes to the same rows as the whole.
  auto part = KvCache::Create(config, config.seq_len);
  ASSERT_TRUE(kv->DecompressLayer(1, 7, 23, *part).ok());
  for (int t = 7; t < 23; ++t) {
    EXPECT_EQ(std::memcmp(part->key(1, t), out->key(1, t), sizeof(float) * shape.kv_dim()), 0);
    EXPECT_EQ(std::memcmp(part->value(1, t), out->value(1, t), sizeof(float) * shape.kv_dim()), 0);
  }
}

TEST(CompressorTest, HalfPrecisionStorage) {
  const ModelConfig config = ConfigFor(3, 2);
  const KvShape shape = KvShape::FromConfig(config);
  const int n = 20, d = shape.head_dim;
  KvCache cache = RandomCache(config, n, 4);
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    CompressorOptions opts;
    opts.dtype = dtype;
    auto kv = CompressKv(cache, shape, PlanWith(3, {{1, 2, 0}}), n, {}, opts);
    ASSERT_TRUE(kv.ok());
    // Hand count: layer 0 plain 2 * 32 * 2 bytes per token; the pair 2 * 32
    // * 2 + 2 heads * 16 bytes of f32 norms.
    EXPECT_EQ(kv->stored_bytes(), static_cast<size_t>(n) * (128 + 128 + 32));
    auto out = KvCache::Create(config, config.seq_len);
    ASSERT_TRUE(kv->DecompressAll(*out).ok());
    // Round to nearest: relative error at most half an ulp (2^-11 / 2^-8).
    const double rel = dtype == DType::kF16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
    for (int t = 0; t < n; ++t) {
      for (int i = 0; i < shape.kv_dim(); ++i) {
        EXPECT_LE(std::abs(out->key(0, t)[i] - cache.key(0, t)[i]),
                  rel * std::abs(cache.key(0, t)[i]) + 1e-7);
      }
      for (int h = 0; h < shape.n_kv_heads; ++h) {
        // Norms are stored in f32 and the direction renormalized: exact norms.
        const float* x = cache.key(2, t) + h * d;
        const float* r = out->key(2, t) + h * d;
        EXPECT_NEAR(NormOf(r, d), NormOf(x, d), 1e-6 * NormOf(x, d));
      }
    }
  }
}

// Pyramid split: layer l stores [n_l, N). Hand-derived segment list for
// stored_begin {10, 6, 3, 0}, pair (1, 2), N = 20, chunks of 8.
TEST(CompressorTest, StoredRangesChunksAndAccounting) {
  const ModelConfig config = ConfigFor(4, 2);
  const KvShape shape = KvShape::FromConfig(config);
  const int n = 20;
  KvCache cache = RandomCache(config, n, 5);
  const std::vector<int> begin = {10, 6, 3, 0};
  const CompressionPlan plan = PlanWith(4, {{1, 2, 0}});
  CompressorOptions opts;
  opts.chunk_tokens = 8;
  auto kv = CompressKv(cache, shape, plan, n, begin, opts);
  ASSERT_TRUE(kv.ok()) << kv.status();
  struct Want {
    SegmentKind kind;
    int layer, partner, begin, end;
  };
  const std::vector<Want> want = {
      {SegmentKind::kPlain, 0, -1, 10, 16}, {SegmentKind::kPlain, 0, -1, 16, 20},
      {SegmentKind::kMerged, 1, 2, 6, 8},   {SegmentKind::kMerged, 1, 2, 8, 16},
      {SegmentKind::kMerged, 1, 2, 16, 20}, {SegmentKind::kPlain, 2, -1, 3, 6},
      {SegmentKind::kPlain, 3, -1, 0, 8},   {SegmentKind::kPlain, 3, -1, 8, 16},
      {SegmentKind::kPlain, 3, -1, 16, 20}};
  ASSERT_EQ(kv->segments.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const KvSegment& s = kv->segments[i];
    EXPECT_EQ(s.kind, want[i].kind) << i;
    EXPECT_EQ(s.layer, want[i].layer) << i;
    EXPECT_EQ(s.partner, want[i].partner) << i;
    EXPECT_EQ(s.begin, want[i].begin) << i;
    EXPECT_EQ(s.end, want[i].end) << i;
  }
  const size_t plain = 2 * 32 * 4, merged = plain + 2 * 16;
  const size_t hand = 10 * plain + 14 * merged + 3 * plain + 20 * plain;
  EXPECT_EQ(kv->stored_bytes(), hand);
  EXPECT_EQ(EstimateStoredBytes(shape, plan, n, begin, DType::kF32), hand);
  EXPECT_EQ(kv->uncompressed_bytes(), (10 + 14 + 17 + 20) * plain);
  EXPECT_THAT(kv->SegmentsFor(2), ::testing::ElementsAre(5, 2, 3, 4));

  auto out = KvCache::Create(config, config.seq_len);
  ASSERT_TRUE(kv->DecompressLayer(2, 3, 20, *out).ok());
  for (int t = 3; t < 6; ++t) {
    EXPECT_EQ(std::memcmp(out->key(2, t), cache.key(2, t), sizeof(float) * 32), 0);
  }
  ASSERT_TRUE(kv->DecompressLayer(0, 12, 18, *out).ok());
  EXPECT_EQ(std::memcmp(out->value(0, 12), cache.value(0, 12), sizeof(float) * 32 * 6), 0);
  EXPECT_EQ(kv->DecompressLayer(2, 2, 20, *out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv->DecompressLayer(1, 5, 20, *out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv->DecompressLayer(0, 10, 21, *out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kv->DecompressLayer(4, 10, 20, *out).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(kv->DecompressLayer(0, 15, 15, *out).ok());  // empty range
  ASSERT_TRUE(kv->DecompressAll(*out).ok());

  // A missing segment is reported, not skipped.
  CompressedKv holey = *kv;
  holey.segments.erase(holey.segments.begin() + 3);
  EXPECT_EQ(holey.DecompressLayer(1, 6, 20, *out).code(), absl::StatusCode::kDataLoss);
}

TEST(CompressorTest, CorruptSegmentsAreRejected) {
  const ModelConfig config = ConfigFor(2, 2);
  const KvShape shape = KvShape::FromConfig(config);
  KvCache cache = RandomCache(config, 12, 6);
  CompressorOptions opts;
  opts.retain_angle_degrees = 85;
  auto kv = CompressKv(cache, shape, PlanWith(2, {{0, 1, 0}}), 12, {}, opts);
  ASSERT_TRUE(kv.ok());
  ASSERT_EQ(kv->segments.size(), 1u);
  const KvSegment good = kv->segments[0];
  auto r = RetainedUnits(good, shape);
  ASSERT_TRUE(r.ok());
  ASSERT_GE(*r, 2);  // random vectors: many wide angles
  auto out = KvCache::Create(config, config.seq_len);
  ASSERT_TRUE(DecodeSegment(good, shape, 1, 0, 12, *out).ok());

  KvSegment bad = good;
  bad.payload.pop_back();
  EXPECT_EQ(DecodeSegment(bad, shape, 0, 0, 12, *out).code(), absl::StatusCode::kDataLoss);
  bad = good;
  bad.payload.resize(10);
  EXPECT_EQ(DecodeSegment(bad, shape, 0, 0, 12, *out).code(), absl::StatusCode::kDataLoss);
  // Swap the first two retained unit indices: out of order.
  bad = good;
  const size_t units = 12 * MergedBytesPerToken(shape, DType::kF32);
  std::swap_ranges(bad.payload.begin() + units, bad.payload.begin() + units + 4,
                   bad.payload.begin() + units + 4);
  EXPECT_EQ(ValidateSegment(bad, shape).code(), absl::StatusCode::kDataLoss);
  // A unit index past the end.
  bad = good;
  std::memset(bad.payload.data() + units, 0xff, 4);
  EXPECT_EQ(DecodeSegment(bad, shape, 0, 0, 12, *out).code(), absl::StatusCode::kDataLoss);
  bad = good;
  bad.partner = 0;
  EXPECT_EQ(ValidateSegment(bad, shape).code(), absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.kind = static_cast<SegmentKind>(7);
  EXPECT_EQ(ValidateSegment(bad, shape).code(), absl::StatusCode::kInvalidArgument);
  bad = good;
  bad.dtype = static_cast<DType>(9);
  EXPECT_FALSE(ValidateSegment(bad, shape).ok());
  bad = good;
  bad.end = bad.begin;
  EXPECT_EQ(ValidateSegment(bad, shape).code(), absl::StatusCode::kInvalidArgument);
  // Requests outside what the segment holds.
  EXPECT_EQ(DecodeSegment(good, shape, 1, 0, 13, *out).code(), absl::StatusCode::kInvalidArgument);
  KvSegment plain = good;
  plain.kind = SegmentKind::kPlain;
  plain.partner = -1;
  plain.payload.resize(12 * PlainBytesPerToken(shape, DType::kF32));
  EXPECT_EQ(DecodeSegment(plain, shape, 1, 0, 12, *out).code(), absl::StatusCode::kInvalidArgument);
  // A cache of another shape.
  auto other = KvCache::Create(ConfigFor(3, 2), 64);
  EXPECT_EQ(DecodeSegment(good, shape, 0, 0, 12, *other).code(),
            absl::StatusCode::kInvalidArgument);

  // Random payloads of random sizes never crash.
  std::mt19937 rng(9);
  for (int i = 0; i < 300; ++i) {
    KvSegment junk = good;
    junk.payload.resize(rng() % (good.payload.size() + 64));
    for (auto& b : junk.payload) b = static_cast<uint8_t>(rng());
    (void)DecodeSegment(junk, shape, 0, 0, 12, *out);
  }
}

TEST(CompressorTest, RejectsBadArguments) {
  const ModelConfig config = ConfigFor(2, 2);
  const KvShape shape = KvShape::FromConfig(config);
  KvCache cache = RandomCache(config, 8, 7);
  const CompressionPlan plan = CompressionPlan::Uncompressed(2);
  EXPECT_EQ(CompressKv(cache, shape, CompressionPlan::Uncompressed(3), 8, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompressKv(cache, shape, plan, 0, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompressKv(cache, shape, plan, 257, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int> too_far = {0, 9};
  EXPECT_EQ(CompressKv(cache, shape, plan, 8, too_far).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int> wrong_size = {0};
  EXPECT_EQ(CompressKv(cache, shape, plan, 8, wrong_size).status().code(),
            absl::StatusCode::kInvalidArgument);
  KvShape other = shape;
  other.head_dim *= 2;
  EXPECT_EQ(CompressKv(cache, other, plan, 8, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  CompressorOptions o;
  o.retain_angle_degrees = 200;
  EXPECT_EQ(CompressKv(cache, shape, plan, 8, {}, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o = {};
  o.chunk_tokens = -1;
  EXPECT_EQ(CompressKv(cache, shape, plan, 8, {}, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Everything recomputed: nothing stored.
  const std::vector<int> none = {8, 8};
  auto kv = CompressKv(cache, shape, plan, 8, none);
  ASSERT_TRUE(kv.ok());
  EXPECT_TRUE(kv->segments.empty());
  EXPECT_EQ(kv->stored_bytes(), 0u);
}

TEST(CompressorTest, PoolEncodingMatchesSerial) {
  const ModelConfig config = ConfigFor(4, 2);
  const KvShape shape = KvShape::FromConfig(config);
  KvCache cache = RandomCache(config, 100, 8);
  ThreadPool pool(2);
  CompressorOptions serial, parallel;
  serial.chunk_tokens = parallel.chunk_tokens = 16;
  serial.retain_angle_degrees = parallel.retain_angle_degrees = 95;
  parallel.pool = &pool;
  const CompressionPlan plan = PlanWith(4, {{0, 3, 0}});
  auto a = CompressKv(cache, shape, plan, 100, {}, serial);
  auto b = CompressKv(cache, shape, plan, 100, {}, parallel);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->segments.size(), b->segments.size());
  for (size_t i = 0; i < a->segments.size(); ++i)
    EXPECT_EQ(a->segments[i].payload, b->segments[i].payload);
}

}  // namespace
}  // namespace krul
