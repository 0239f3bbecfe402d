// A turn's compressed KV survives the trip through blocks, a manifest and
// the store, and a KvSource over the store restores exactly what the
// compressor's own decoder restores.
#include "worker/session/kv_blocks.h"

#include <random>

#include "gtest/gtest.h"
#include "krul/kvformat/manifest.h"

namespace krul::worker {
namespace {

constexpr int kLayers = 4, kHeads = 2, kHeadDim = 8, kTokens = 40;

ModelConfig Config() {
  ModelConfig c;
  c.dim = 32;
  c.hidden_dim = 64;
  c.n_layers = kLayers;
  c.n_heads = 4;
  c.n_kv_heads = kHeads;
  c.vocab_size = 300;
  c.seq_len = 64;
  return c;
}

KvCache RandomCache() {
  KvCache cache = *KvCache::Create(Config(), kTokens);
  std::mt19937 rng(7);
  std::normal_distribution<float> dist;
  for (int l = 0; l < kLayers; ++l) {
    for (int t = 0; t < kTokens; ++t) {
      for (int i = 0; i < kHeads * kHeadDim; ++i) {
        cache.key(l, t)[i] = dist(rng);
        cache.value(l, t)[i] = dist(rng);
      }
    }
  }
  return cache;
}

struct Fixture {
  KvShape shape{kLayers, kHeads, kHeadDim};
  KvCache cache = RandomCache();
  CompressedKv kv;
  MemoryConversationStore store;
  v1::Manifest manifest;

  Fixture() {
    CompressionPlan plan = CompressionPlan::Uncompressed(kLayers);
    plan.pairs.push_back({1, 2, 0});
    plan.target_ratio = 4.0 / 3.0;
    CompressorOptions options;
    options.chunk_tokens = 16;  // several blocks per layer
    const std::vector<int> stored_begin = {20, 8, 8, 0};
    kv = *CompressKv(cache, shape, plan, kTokens, stored_begin, options);
    v1::ConversationKey key;
    key.set_tenant("t");
    key.set_conversation_id("c");
    key.set_turn(1);
    auto version = BuildStoredVersion(key, "model", "record", kv);
    EXPECT_TRUE(version.ok()) << version.status();
    manifest = version->manifest;
    EXPECT_TRUE(ValidateManifest(manifest).ok());
    EXPECT_EQ(manifest.blocks_size(), static_cast<int>(kv.segments.size()));
    EXPECT_TRUE(store.Write(manifest, version->blocks, absl::InfiniteFuture()).ok());
  }
};

bool SameRows(KvCache& a, const KvCache& b, int layer, int begin, int end) {
  const size_t n = static_cast<size_t>(kHeads) * kHeadDim;
  for (int t = begin; t < end; ++t) {
    if (std::memcmp(a.key(layer, t), b.key(layer, t), n * sizeof(float)) != 0) return false;
    if (std::memcmp(a.value(layer, t), b.value(layer, t), n * sizeof(float)) != 0) return false;
  }
  return true;
}

TEST(KvBlocksTest, SourceRestoresWhatTheCompressorDecodes) {
  Fixture f;
  KvCache expected = *KvCache::Create(Config(), kTokens);
  ASSERT_TRUE(f.kv.DecompressAll(expected).ok());
  KvCache restored = *KvCache::Create(Config(), kTokens);
  auto source = MakeStoreKvSource(&f.store, f.manifest, f.shape, absl::Seconds(5));
  const int pair[] = {1, 2};
  const int layer0[] = {0}, layer2[] = {2}, layer3[] = {3};
  auto bytes = source->Fetch(layer0, 20, kTokens, restored);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_GT(*bytes, 0u);
  ASSERT_TRUE(source->Fetch(pair, 8, kTokens, restored).ok());
  ASSERT_TRUE(source->Fetch(layer3, 0, kTokens, restored).ok());
  EXPECT_TRUE(SameRows(restored, expected, 0, 20, kTokens));
  EXPECT_TRUE(SameRows(restored, expected, 1, 8, kTokens));
  EXPECT_TRUE(SameRows(restored, expected, 2, 8, kTokens));
  EXPECT_TRUE(SameRows(restored, expected, 3, 0, kTokens));
  // Unshared layers are stored as they were (fp32: bit-exact).
  EXPECT_TRUE(SameRows(restored, f.cache, 0, 20, kTokens));
  EXPECT_TRUE(SameRows(restored, f.cache, 3, 0, kTokens));
  // A sub-range touches only its rows.
  KvCache partial = *KvCache::Create(Config(), kTokens);
  ASSERT_TRUE(source->Fetch(layer2, 10, 12, partial).ok());
  EXPECT_TRUE(SameRows(partial, expected, 2, 10, 12));
  EXPECT_EQ(partial.key(2, 9)[0], 0.0f);
  EXPECT_EQ(partial.key(2, 12)[0], 0.0f);
}

TEST(KvBlocksTest, PrefetchingSourceRestoresTheSame) {
  Fixture f;
  KvCache expected = *KvCache::Create(Config(), kTokens);
  ASSERT_TRUE(f.kv.DecompressAll(expected).ok());
  std::vector<LoadStep> loads(3);
  loads[0].write_layers = {0};
  loads[0].begin = 20;
  loads[0].end = kTokens;
  loads[1].write_layers = {1, 2};
  loads[1].begin = 8;
  loads[1].end = kTokens;
  loads[2].write_layers = {3};
  loads[2].begin = 0;
  loads[2].end = kTokens;
  const std::vector<uint32_t> prefetch = BlocksForLoads(f.manifest, loads);
  EXPECT_EQ(prefetch.size(), f.kv.segments.size());  // every stored block is needed
  KvCache restored = *KvCache::Create(Config(), kTokens);
  auto source = MakeStoreKvSource(&f.store, f.manifest, f.shape, absl::Seconds(5), prefetch);
  size_t bytes = 0;
  for (const LoadStep& step : loads) {
    auto b = source->Fetch(step.write_layers, step.begin, step.end, restored);
    ASSERT_TRUE(b.ok()) << b.status();
    bytes += *b;
  }
  EXPECT_EQ(bytes, ManifestBlockBytes(f.manifest));
  for (int l = 0; l < kLayers; ++l) {
    EXPECT_TRUE(SameRows(restored, expected, l, l == 0 ? 20 : (l == 3 ? 0 : 8), kTokens)) << l;
  }
  // A re-planned restore can split a step: a block is then decoded by two
  // fetches. Prefetched, it crossed the wire once and counts once; read on
  // demand, it is read (and counted) twice.
  const int layer3[] = {3};
  auto split = MakeStoreKvSource(&f.store, f.manifest, f.shape, absl::Seconds(5), prefetch);
  auto head = split->Fetch(layer3, 0, 5, restored);
  auto tail = split->Fetch(layer3, 5, 10, restored);
  ASSERT_TRUE(head.ok() && tail.ok());
  EXPECT_GT(*head, 0u);
  EXPECT_EQ(*tail, 0u);  // the same 16-token block, already counted
  auto on_demand = MakeStoreKvSource(&f.store, f.manifest, f.shape, absl::Seconds(5));
  auto head2 = on_demand->Fetch(layer3, 0, 5, restored);
  auto tail2 = on_demand->Fetch(layer3, 5, 10, restored);
  ASSERT_TRUE(head2.ok() && tail2.ok());
  EXPECT_EQ(*head2, *head);
  EXPECT_EQ(*tail2, *head);
  // A prefetch that fails (corrupted store) reports DATA_LOSS to the Fetch.
  f.store.CorruptBlocks();
  auto failing = MakeStoreKvSource(&f.store, f.manifest, f.shape, absl::Seconds(5), prefetch);
  EXPECT_EQ(failing->Fetch(loads[0].write_layers, 20, kTokens, restored).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(KvBlocksTest, UnstoredRangeIsMissingBlocks) {
  Fixture f;
  KvCache restored = *KvCache::Create(Config(), kTokens);
  auto source = MakeStoreKvSource(&f.store, f.manifest, f.shape, absl::Seconds(5));
  const int layer0[] = {0};
  auto r = source->Fetch(layer0, 0, kTokens, restored);  // layer 0 stores [20, 40) only
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
}

TEST(KvBlocksTest, CorruptedBlockIsDataLossAndStoreErrorsPassThrough) {
  Fixture f;
  KvCache restored = *KvCache::Create(Config(), kTokens);
  auto source = MakeStoreKvSource(&f.store, f.manifest, f.shape, absl::Seconds(5));
  const int layer3[] = {3};
  f.store.CorruptBlocks();
  EXPECT_EQ(source->Fetch(layer3, 0, kTokens, restored).status().code(),
            absl::StatusCode::kDataLoss);
  f.store.InjectFailure(absl::UnavailableError("down"));
  EXPECT_EQ(source->Fetch(layer3, 0, kTokens, restored).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(KvBlocksTest, BlockHeadersDescribeTheSegments) {
  Fixture f;
  for (const KvSegment& s : f.kv.segments) {
    auto encoded = EncodeSegmentBlock(s, f.shape);
    ASSERT_TRUE(encoded.ok());
    auto decoded = DecodeBlock(*encoded);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(decoded->header.layer, static_cast<uint32_t>(s.layer));
    EXPECT_EQ(decoded->header.token_begin, static_cast<uint32_t>(s.begin));
    EXPECT_EQ(decoded->header.num_tokens, static_cast<uint32_t>(s.end - s.begin));
    EXPECT_EQ(decoded->header.layout, s.kind == SegmentKind::kPlain ? BlockLayout::kKvTokenMajor
                                                                    : BlockLayout::kMergedPair);
    auto back = SegmentFromBlock(*decoded);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(back->payload, s.payload);
    EXPECT_EQ(back->partner, s.partner);
  }
}

}  // namespace
}  // namespace krul::worker
