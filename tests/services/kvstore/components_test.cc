// Unit tests of the store's building blocks: DRAM tier, quotas, leases,
// options, RocksDB tier.
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kv_test_util.h"
#include "kvstore/options.h"
#include "kvstore/storage/dram_tier.h"
#include "kvstore/storage/lease.h"
#include "kvstore/storage/quota.h"
#include "kvstore/storage/rocksdb_tier.h"

namespace krul::kvstore {
namespace {

using ::krul::testing::Key;
using ::krul::testing::MakeVersion;
using ::krul::testing::TempDir;
using ::krul::testing::TestVersion;

VersionKey VK(int i) { return VersionKey{"t", absl::StrCat("c", i), 0}; }

std::vector<BufferPtr> Blocks(uint64_t bytes) {
  std::unique_ptr<ByteBuffer> b = ByteBuffer::Allocate(bytes);
  std::memset(b->data(), 7, bytes);
  return {BufferPtr(std::move(b))};
}

TEST(DramTierTest, WatermarksAreFractionsOfCapacity) {
  DramTier tier(1000, 0.9, 0.5);
  EXPECT_EQ(tier.high_bytes(), 900u);
  EXPECT_EQ(tier.low_bytes(), 500u);
  EXPECT_TRUE(tier.CanEverHold(900));
  EXPECT_FALSE(tier.CanEverHold(901));
}

TEST(DramTierTest, VictimsAreLeastRecentlyUsedDownToLowWatermark) {
  DramTier tier(1000, 0.9, 0.5);
  for (int i = 0; i < 9; ++i) tier.Insert(VK(i), Blocks(100), 100);
  EXPECT_EQ(tier.used_bytes(), 900u);
  EXPECT_TRUE(tier.PickVictims().empty()) << "at the high watermark, not above";
  tier.Touch(VK(0));                            // 0 becomes most recent
  ASSERT_NE(tier.GetBlock(VK(1), 0), nullptr);  // 1 too
  tier.Insert(VK(9), Blocks(100), 100);         // 1000 > 900
  // LRU order now: 2,3,4,5,6,7,8,0,1,9. Down to <= 500 takes 5 victims.
  std::vector<VersionKey> victims = tier.PickVictims();
  std::vector<VersionKey> want = {VK(2), VK(3), VK(4), VK(5), VK(6)};
  EXPECT_EQ(victims, want);
  for (const VersionKey& k : victims) EXPECT_TRUE(tier.Erase(k));
  EXPECT_EQ(tier.used_bytes(), 500u);
  EXPECT_EQ(tier.objects(), 5u);
}

TEST(DramTierTest, PinnedVersionsAreNeverVictims) {
  DramTier tier(1000, 0.9, 0.5);
  for (int i = 0; i < 10; ++i) tier.Insert(VK(i), Blocks(100), 100);
  tier.SetPinned(VK(0), true);
  tier.SetPinned(VK(1), true);
  EXPECT_EQ(tier.pinned_bytes(), 200u);
  std::vector<VersionKey> victims = tier.PickVictims();
  std::vector<VersionKey> want = {VK(2), VK(3), VK(4), VK(5), VK(6)};
  EXPECT_EQ(victims, want);
  EXPECT_FALSE(tier.CanEverHold(701));
  EXPECT_TRUE(tier.CanEverHold(700));
  tier.SetPinned(VK(0), false);
  EXPECT_EQ(tier.pinned_bytes(), 100u);
}

TEST(DramTierTest, ReplaceKeepsAccountingAndPin) {
  DramTier tier(1000, 0.9, 0.5);
  tier.Insert(VK(1), Blocks(100), 100);
  tier.SetPinned(VK(1), true);
  tier.Insert(VK(1), Blocks(300), 300);
  EXPECT_EQ(tier.used_bytes(), 300u);
  EXPECT_EQ(tier.pinned_bytes(), 300u);
  EXPECT_EQ(tier.objects(), 1u);
  EXPECT_EQ(tier.GetBlock(VK(1), 1), nullptr);
  EXPECT_EQ(tier.GetBlock(VK(2), 0), nullptr);
  EXPECT_TRUE(tier.Erase(VK(1)));
  EXPECT_FALSE(tier.Erase(VK(1)));
  EXPECT_EQ(tier.used_bytes(), 0u);
  EXPECT_EQ(tier.pinned_bytes(), 0u);
}

TEST(QuotaTableTest, ReservationsAndStoredBytesShareTheLimit) {
  QuotaTable q(1000, {{"big", 5000}});
  EXPECT_EQ(q.Limit("anyone"), 1000u);
  EXPECT_EQ(q.Limit("big"), 5000u);
  ASSERT_TRUE(q.Reserve("a", 600).ok());
  EXPECT_EQ(q.Reserve("a", 401).code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(q.Reserve("a", 400).ok());
  q.Commit("a", 600, 600);
  EXPECT_EQ(q.Stored("a"), 600u);
  EXPECT_EQ(q.Reserved("a"), 400u);
  q.Unreserve("a", 400);
  EXPECT_EQ(q.Reserve("a", 401).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(q.Reserve("a", 400).ok());
  EXPECT_TRUE(q.Reserve("b", 1000).ok()) << "tenants are independent";
  EXPECT_TRUE(q.Reserve("big", 4000).ok());
  q.Release("a", 600);
  EXPECT_EQ(q.Stored("a"), 0u);
  QuotaTable unlimited(0, {});
  EXPECT_TRUE(unlimited.Reserve("x", uint64_t{1} << 50).ok());
}

TEST(LeaseTableTest, GrantReleaseExpire) {
  LeaseTable leases(42);
  absl::Time t0 = absl::FromUnixSeconds(1000);
  uint64_t a = leases.Grant(VK(1), t0 + absl::Seconds(5));
  uint64_t b = leases.Grant(VK(1), t0 + absl::Seconds(10));
  uint64_t c = leases.Grant(VK(2), t0 + absl::Seconds(5));
  EXPECT_NE(a, b);
  EXPECT_EQ(leases.PinCount(VK(1)), 2);
  absl::StatusOr<VersionKey> released = leases.Release(a);
  ASSERT_TRUE(released.ok());
  EXPECT_EQ(*released, VK(1));
  EXPECT_EQ(leases.Release(a).status().code(), absl::StatusCode::kNotFound);
  std::vector<VersionKey> expired = leases.CollectExpired(t0 + absl::Seconds(5));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0], VK(2));
  EXPECT_EQ(leases.PinCount(VK(2)), 0);
  EXPECT_EQ(leases.PinCount(VK(1)), 1);
  EXPECT_EQ(leases.Release(c).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(leases.CollectExpired(t0 + absl::Seconds(11)).size(), 1u);
  EXPECT_EQ(leases.PinCount(VK(1)), 0);
  (void)b;
}

TEST(OptionsTest, DefaultsValidateWithAPath) {
  StoreOptions o;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(o.Validate().message().find("rocksdb_path"), std::string::npos);
  o.rocksdb_path = "/tmp/x";
  EXPECT_TRUE(o.Validate().ok()) << o.Validate();
  o.tiers = TierMode::kDramOnly;
  o.rocksdb_path.clear();
  EXPECT_TRUE(o.Validate().ok());
}

TEST(OptionsTest, ErrorsNameTheField) {
  struct Case {
    const char* field;
    void (*mutate)(StoreOptions&);
  };
  const Case cases[] = {
      {"high_watermark", [](StoreOptions& o) { o.high_watermark = 1.5; }},
      {"low_watermark", [](StoreOptions& o) { o.low_watermark = 0.95; }},
      {"dram_capacity_bytes", [](StoreOptions& o) { o.dram_capacity_bytes = 0; }},
      {"write_mode",
       [](StoreOptions& o) {
         o.tiers = TierMode::kRocksDbOnly;
         o.write_mode = WriteMode::kWriteBack;
       }},
      {"max_block_bytes", [](StoreOptions& o) { o.max_block_bytes = 10; }},
      {"put_timeout", [](StoreOptions& o) { o.put_timeout = absl::ZeroDuration(); }},
      {"max_ttl", [](StoreOptions& o) { o.max_ttl = absl::Seconds(1); }},
      {"max_lease", [](StoreOptions& o) { o.max_lease = absl::Seconds(1); }},
      {"allow_unknown_tenants", [](StoreOptions& o) { o.allow_unknown_tenants = false; }},
  };
  for (const Case& c : cases) {
    StoreOptions o;
    o.rocksdb_path = "/tmp/x";
    c.mutate(o);
    absl::Status s = o.Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(s.message().find(c.field), std::string::npos) << s;
  }
  ServerOptions server;
  server.store.rocksdb_path = "/tmp/x";
  EXPECT_TRUE(server.Validate().ok());
  server.port = 70000;
  EXPECT_NE(server.Validate().message().find("port"), std::string::npos);
  server.port = 0;
  server.store.high_watermark = 0;
  EXPECT_NE(server.Validate().message().find("store.high_watermark"), std::string::npos);
}

TEST(OptionsTest, ParsesSizesModesAndQuotas) {
  EXPECT_EQ(*ParseByteSize("1024"), 1024u);
  EXPECT_EQ(*ParseByteSize("64K"), 64u * 1024);
  EXPECT_EQ(*ParseByteSize("64KiB"), 64u * 1024);
  EXPECT_EQ(*ParseByteSize("3MB"), 3u << 20);
  EXPECT_EQ(*ParseByteSize("2g"), uint64_t{2} << 30);
  EXPECT_EQ(*ParseByteSize("7B"), 7u);
  EXPECT_FALSE(ParseByteSize("").ok());
  EXPECT_FALSE(ParseByteSize("K").ok());
  EXPECT_FALSE(ParseByteSize("-5").ok());
  EXPECT_FALSE(ParseByteSize("12Q").ok());
  EXPECT_FALSE(ParseByteSize("99999999999T").ok());
  EXPECT_EQ(*ParseTierMode("dram+rocksdb"), TierMode::kDramAndRocksDb);
  EXPECT_FALSE(ParseTierMode("ssd").ok());
  EXPECT_EQ(*ParseWriteMode("write-back"), WriteMode::kWriteBack);
  auto quotas = ParseTenantQuotas("acme=1G, beta=512K");
  ASSERT_TRUE(quotas.ok()) << quotas.status();
  EXPECT_EQ(quotas->at("acme"), uint64_t{1} << 30);
  EXPECT_EQ(quotas->at("beta"), 512u * 1024);
  EXPECT_FALSE(ParseTenantQuotas("acme").ok());
  EXPECT_FALSE(ParseTenantQuotas("=5").ok());
  EXPECT_FALSE(ParseTenantQuotas("a=lots").ok());
}

TEST(RocksDbTierTest, WritesReadsDeletesAndReloads) {
  TempDir dir;
  TestVersion v = MakeVersion(Key("t", "conv", 2), 3, 10000, 1);
  VersionKey key = VersionKey::FromProto(v.manifest.key());
  std::vector<BufferPtr> blocks;
  for (const std::string& b : v.blocks) {
    std::unique_ptr<ByteBuffer> buf = ByteBuffer::Allocate(b.size());
    std::memcpy(buf->data(), b.data(), b.size());
    blocks.push_back(std::move(buf));
  }
  {
    auto tier = RocksDbTier::Open({.path = dir.path()});
    ASSERT_TRUE(tier.ok()) << tier.status();
    ASSERT_TRUE((*tier)->WriteVersion(key, v.manifest, blocks, false).ok());
    absl::StatusOr<BufferPtr> b1 = (*tier)->ReadBlock(key, 1);
    ASSERT_TRUE(b1.ok()) << b1.status();
    EXPECT_EQ((*b1)->view(), v.blocks[1]);
    EXPECT_EQ((*tier)->ReadBlock(key, 3).status().code(), absl::StatusCode::kNotFound);
  }
  {
    auto tier = RocksDbTier::Open({.path = dir.path()});
    ASSERT_TRUE(tier.ok()) << tier.status();
    int seen = 0;
    ASSERT_TRUE((*tier)
                    ->ForEachManifest([&](const VersionKey& k, absl::StatusOr<v1::Manifest> m) {
                      ++seen;
                      EXPECT_EQ(k, key);
                      ASSERT_TRUE(m.ok());
                      EXPECT_EQ(m->SerializeAsString(), v.manifest.SerializeAsString());
                    })
                    .ok());
    EXPECT_EQ(seen, 1);
    ASSERT_TRUE((*tier)->DeleteVersion(key).ok());
    EXPECT_EQ((*tier)->ReadManifest(key).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ((*tier)->ReadBlock(key, 0).status().code(), absl::StatusCode::kNotFound);
  }
}

TEST(RocksDbTierTest, KeysOfDifferentVersionsNeverCollide) {
  // Length prefixes keep ("ab","c") and ("a","bc") apart.
  VersionKey a{"ab", "c", 1};
  VersionKey b{"a", "bc", 1};
  EXPECT_NE(RocksDbTier::ManifestKey(a), RocksDbTier::ManifestKey(b));
  EXPECT_NE(RocksDbTier::BlockKey(a, 0), RocksDbTier::BlockKey(b, 0));
  // Turn order is numeric (big-endian), so the latest turn sorts last.
  EXPECT_LT(RocksDbTier::ManifestKey({"t", "c", 2}), RocksDbTier::ManifestKey({"t", "c", 256}));
}

TEST(RocksDbTierTest, UnusablePathIsUnavailable) {
  TempDir dir;
  std::string file = dir.Sub("not-a-dir");
  std::ofstream(file) << "x";
  auto tier = RocksDbTier::Open({.path = file + "/db"});
  EXPECT_FALSE(tier.ok());
  EXPECT_EQ(tier.status().code(), absl::StatusCode::kUnavailable) << tier.status();
}

}  // namespace
}  // namespace krul::kvstore
