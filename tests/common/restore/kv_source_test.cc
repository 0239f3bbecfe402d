#include "krul/restore/kv_source.h"

#include <chrono>
#include <memory>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "krul/compress/compressor.h"
#include "krul/engine/kv_cache.h"
#include "krul/model/model.h"

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

// A source that takes `seconds` per fetch (or fails) and records what it
// was asked for.
class FakeSource final : public KvSource {
 public:
  FakeSource(double seconds, size_t bytes, absl::Status status = absl::OkStatus())
      : seconds_(seconds), bytes_(bytes), status_(std::move(status)) {}

  absl::StatusOr<size_t> Fetch(std::span<const int> layers, int begin, int end,
                               BackendKvCache&) override {
    asked_layers = std::vector<int>(layers.begin(), layers.end());
    asked_begin = begin;
    asked_end = end;
    // A real sleep: the pacing tests time fetches on the wall clock, which
    // is what the link-paced source sleeps against (it takes no clock).
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds_));
    if (!status_.ok()) return status_;
    return bytes_;
  }

  std::vector<int> asked_layers;
  int asked_begin = -1, asked_end = -1;

 private:
  const double seconds_;
  const size_t bytes_;
  const absl::Status status_;
};

// Wall-clock seconds of one fetch through `source`.
double TimedFetch(KvSource& source, KvCache& cache, absl::StatusOr<size_t>* result) {
  const std::vector<int> layers = {1, 3};
  const auto t0 = std::chrono::steady_clock::now();
  *result = source.Fetch(layers, 4, 9, cache);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

TEST(LinkPacedKvSourceTest, AFetchTakesTheLongerOfTheRealAndTheEmulatedTime) {
  const ModelConfig c = Config();
  auto cache = KvCache::Create(c, c.seq_len);
  ASSERT_TRUE(cache.ok());
  LinkModel link;
  link.latency_s = 0.010;
  link.bytes_per_second = 1e6;  // 40,000 B -> 40 ms; emulated total 50 ms

  // A fast inner source: the link sets the time (50 ms), not the sum.
  auto fast = std::make_unique<FakeSource>(0.0, 40000);
  FakeSource* fast_raw = fast.get();
  LinkPacingStats stats;
  auto paced = MakeLinkPacedKvSource(std::move(fast), link, &stats);
  ASSERT_TRUE(paced.ok()) << paced.status();
  absl::StatusOr<size_t> bytes;
  double seconds = TimedFetch(**paced, *cache, &bytes);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, 40000u);
  EXPECT_GE(seconds, 0.050);
  EXPECT_LT(seconds, 0.090);  // generous: a busy CPU oversleeps
  // The request reached the inner source unchanged.
  EXPECT_EQ(fast_raw->asked_layers, (std::vector<int>{1, 3}));
  EXPECT_EQ(fast_raw->asked_begin, 4);
  EXPECT_EQ(fast_raw->asked_end, 9);
  EXPECT_EQ(stats.fetches, 1);
  EXPECT_EQ(stats.bytes, 40000u);
  EXPECT_LT(stats.inner_seconds, 0.030);
  EXPECT_GE(stats.paced_seconds, 0.050);

  // The source is one stream: a second fetch pays no latency again, only
  // its bytes (80,000 B in all by 10 + 80 ms after the stream started), and
  // the stats add up over fetches.
  seconds = TimedFetch(**paced, *cache, &bytes);
  ASSERT_TRUE(bytes.ok());
  EXPECT_GE(seconds, 0.035);
  EXPECT_LT(seconds, 0.075);
  EXPECT_EQ(stats.fetches, 2);
  EXPECT_EQ(stats.bytes, 80000u);
  EXPECT_GE(stats.paced_seconds, 0.090);

  // A slow inner source (80 ms) behind the same link (50 ms): max = 80 ms,
  // well short of the sum (130 ms).
  LinkPacingStats slow_stats;
  auto slow = MakeLinkPacedKvSource(std::make_unique<FakeSource>(0.080, 40000), link, &slow_stats);
  ASSERT_TRUE(slow.ok());
  seconds = TimedFetch(**slow, *cache, &bytes);
  ASSERT_TRUE(bytes.ok());
  EXPECT_GE(seconds, 0.080);
  EXPECT_LT(seconds, 0.120);
  EXPECT_GE(slow_stats.inner_seconds, 0.080);
  EXPECT_GE(slow_stats.paced_seconds, slow_stats.inner_seconds);

  // Latency only (no bandwidth limit): 10 ms whatever the bytes.
  LinkModel latency_only;
  latency_only.latency_s = 0.010;
  auto lat = MakeLinkPacedKvSource(std::make_unique<FakeSource>(0.0, 1u << 30), latency_only);
  ASSERT_TRUE(lat.ok());
  seconds = TimedFetch(**lat, *cache, &bytes);
  ASSERT_TRUE(bytes.ok());
  EXPECT_GE(seconds, 0.010);
  EXPECT_LT(seconds, 0.050);
}

TEST(LinkPacedKvSourceTest, ErrorsPassThroughUnpacedAndBadArgumentsAreRejected) {
  const ModelConfig c = Config();
  auto cache = KvCache::Create(c, c.seq_len);
  ASSERT_TRUE(cache.ok());
  LinkModel link;
  link.latency_s = 1.0;  // a paced failure would take a second
  LinkPacingStats stats;
  auto paced = MakeLinkPacedKvSource(
      std::make_unique<FakeSource>(0.0, 10, absl::UnavailableError("store down")), link, &stats);
  ASSERT_TRUE(paced.ok());
  absl::StatusOr<size_t> bytes;
  const double seconds = TimedFetch(**paced, *cache, &bytes);
  EXPECT_EQ(bytes.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(seconds, 0.5);
  EXPECT_EQ(stats.fetches, 0);
  EXPECT_EQ(stats.bytes, 0u);

  LinkModel bad;
  bad.latency_s = -1;
  EXPECT_EQ(MakeLinkPacedKvSource(std::make_unique<FakeSource>(0.0, 1), bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeLinkPacedKvSource(nullptr, link).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The in-process store paces through the same wrapper: a fetch of real KV
// takes at least the emulated time, and not much more when decompressing
// it is cheap.
TEST(LinkPacedKvSourceTest, InProcessStoreFetchIsPacedByTheLink) {
  const ModelConfig c = Config();
  KvCache full = RandomCache(c, 3);
  auto kv =
      CompressKv(full, KvShape::FromConfig(c), CompressionPlan::Uncompressed(c.n_layers), 32, {});
  ASSERT_TRUE(kv.ok());
  LinkModel link;
  link.latency_s = 0.005;
  link.bytes_per_second = 32 * 256 / 0.020;  // one layer's 32 tokens (8 KiB) in 20 ms
  auto source = MakeInProcessKvSource(std::make_shared<const CompressedKv>(*std::move(kv)), link);
  auto out = KvCache::Create(c, c.seq_len);
  ASSERT_TRUE(out.ok());
  const std::vector<int> layer = {0};
  const auto t0 = std::chrono::steady_clock::now();
  auto bytes = source->Fetch(layer, 0, 32, *out);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, 32u * 256u);  // 32 tokens x (K + V) x 32 floats
  EXPECT_GE(seconds, 0.025);
  EXPECT_LT(seconds, 0.065);
  EXPECT_EQ(out->key(0, 17)[5], full.key(0, 17)[5]);
}

}  // namespace
}  // namespace krul
