#include "krul/kv_source.h"

#include <chrono>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "krul/compressor.h"
#include "krul/kv_cache.h"
#include "krul/model.h"

namespace krul {
namespace {

ModelConfig Config() {
  ModelConfig c;
  c.dim = 32;
  c.hidden_dim = 64;
  c.n_layers = 4;
  c.n_heads = 2;
  c.n_kv_heads = 2;
  c.vocab_size = 16;
  c.seq_len = 64;
  return c;
}

KvCache RandomCache(const ModelConfig& c, uint32_t seed) {
  auto cache = KvCache::Create(c, c.seq_len);
  EXPECT_TRUE(cache.ok());
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  for (int l = 0; l < c.n_layers; ++l) {
    for (int t = 0; t < c.seq_len; ++t) {
      for (int i = 0; i < c.kv_dim(); ++i) {
        cache->key(l, t)[i] = g(rng);
        cache->value(l, t)[i] = g(rng);
      }
    }
  }
  return std::move(*cache);
}

TEST(KvSourceTest, FetchWritesOnlyTheRequestedRangeAndCountsBytes) {
  const ModelConfig c = Config();
  const KvShape shape = KvShape::FromConfig(c);
  KvCache full = RandomCache(c, 1);
  CompressionPlan plan = CompressionPlan::Uncompressed(c.n_layers);
  plan.pairs = {{1, 3, 0}};
  plan.target_ratio = plan.ratio();
  const int N = 40;
  // Layer 1 stores [20, 40) (merged with 3 over it), layer 3 [10, 40).
  const std::vector<int> begin = {0, 20, 0, 10};
  CompressorOptions co;
  co.chunk_tokens = 16;
  auto kv = CompressKv(full, shape, plan, N, begin, co);
  ASSERT_TRUE(kv.ok()) << kv.status();
  auto store = InProcessKvStore::Create();
  ASSERT_TRUE(store.ok());
  (*store)->Put("a", *kv);
  auto source = (*store)->Open("a");
  ASSERT_TRUE(source.ok());

  auto out = KvCache::Create(c, c.seq_len);
  ASSERT_TRUE(out.ok());
  // A plain layer: bytes are exactly its rows.
  const std::vector<int> layer0 = {0};
  auto bytes = (*source)->Fetch(layer0, 5, 25, *out);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, 20 * PlainBytesPerToken(shape, DType::kF32));
  for (int t = 0; t < c.seq_len; ++t) {
    const bool inside = t >= 5 && t < 25;
    EXPECT_EQ(out->key(0, t)[0], inside ? full.key(0, t)[0] : 0.0f) << t;
  }
  // The shared pair over [20, 40): one transfer for both layers.
  const std::vector<int> pair = {1, 3};
  bytes = (*source)->Fetch(pair, 20, 40, *out);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, 20 * MergedBytesPerToken(shape, DType::kF32));
  EXPECT_NE(out->key(1, 30)[0], 0.0f);
  EXPECT_NE(out->key(3, 30)[0], 0.0f);
  EXPECT_EQ(out->key(3, 15)[0], 0.0f);
  // Layer 3's own tail [10, 20).
  const std::vector<int> layer3 = {3};
  bytes = (*source)->Fetch(layer3, 10, 20, *out);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, 10 * PlainBytesPerToken(shape, DType::kF32));
  EXPECT_EQ(out->key(3, 15)[0], full.key(3, 15)[0]);
  EXPECT_EQ(*(*store)->StoredBytes("a"), kv->stored_bytes());

  // Not stored: layer 1 below 20, beyond N, empty ranges, bad layers.
  const std::vector<int> layer1 = {1};
  EXPECT_EQ((*source)->Fetch(layer1, 10, 20, *out).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*source)->Fetch(layer0, 30, 41, *out).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*source)->Fetch(layer0, 7, 7, *out).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int> bad = {9};
  EXPECT_EQ((*source)->Fetch(bad, 0, 5, *out).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*source)->Fetch({}, 0, 5, *out).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvSourceTest, StoreKeysAndLinkModel) {
  auto store = InProcessKvStore::Create();
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->Open("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*store)->Erase("missing").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*store)->StoredBytes("missing").status().code(), absl::StatusCode::kNotFound);
  LinkModel bad;
  bad.bytes_per_second = -1;
  EXPECT_EQ(InProcessKvStore::Create(bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*store)->SetLink(bad).code(), absl::StatusCode::kInvalidArgument);

  // The emulated link: a fetch takes at least latency + bytes / bandwidth.
  const ModelConfig c = Config();
  KvCache full = RandomCache(c, 2);
  auto kv =
      CompressKv(full, KvShape::FromConfig(c), CompressionPlan::Uncompressed(c.n_layers), 32, {});
  ASSERT_TRUE(kv.ok());
  (*store)->Put("b", *kv);
  LinkModel link;
  link.latency_s = 2e-3;
  link.bytes_per_second = 1e6;  // 32 tokens * 256 B = 8 KiB -> ~8 ms
  ASSERT_TRUE((*store)->SetLink(link).ok());
  auto source = (*store)->Open("b");
  ASSERT_TRUE(source.ok());
  auto out = KvCache::Create(c, c.seq_len);
  ASSERT_TRUE(out.ok());
  const std::vector<int> layer = {2};
  const auto t0 = std::chrono::steady_clock::now();
  auto bytes = (*source)->Fetch(layer, 0, 32, *out);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(bytes.ok());
  EXPECT_GE(seconds, link.latency_s + *bytes / link.bytes_per_second);
  // Erasing the key does not break an open source.
  ASSERT_TRUE((*store)->Erase("b").ok());
  EXPECT_TRUE((*source)->Fetch(layer, 0, 4, *out).ok());
}

}  // namespace
}  // namespace krul
