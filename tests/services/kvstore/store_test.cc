// Unit tests of the storage engine (Store): two-phase puts, tiers,
// eviction, restart, quotas, TTL, leases, corruption and concurrency.
#include "kvstore/storage/store.h"

#include <rocksdb/db.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kv_test_util.h"

namespace krul::kvstore {
namespace {

using ::krul::testing::Key;
using ::krul::testing::MakeVersion;
using ::krul::testing::TempDir;
using ::krul::testing::TestVersion;

class StoreTest : public ::testing::Test {
 protected:
  StoreOptions Options(TierMode tiers = TierMode::kDramAndRocksDb) {
    StoreOptions o;
    o.tiers = tiers;
    if (tiers != TierMode::kDramOnly) o.rocksdb_path = dir_.Sub("db");
    o.dram_capacity_bytes = 1 << 20;
    o.high_watermark = 0.8;
    o.low_watermark = 0.5;
    o.rocksdb_write_buffer_bytes = 8 << 20;
    o.default_ttl = absl::ZeroDuration();
    return o;
  }

  std::unique_ptr<Store> OpenStore(const StoreOptions& o) {
    absl::StatusOr<std::unique_ptr<Store>> s = Store::Open(o, &clock_);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  // Asserts that `key` is committed with exactly v's manifest and blocks.
  void ExpectVersion(Store& store, const TestVersion& v) {
    absl::StatusOr<std::shared_ptr<const v1::Manifest>> m = store.Lookup(v.manifest.key());
    ASSERT_TRUE(m.ok()) << m.status();
    ASSERT_EQ((*m)->blocks_size(), v.manifest.blocks_size());
    EXPECT_EQ((*m)->plan(), v.manifest.plan());
    VersionKey key = VersionKey::FromProto(v.manifest.key());
    for (size_t i = 0; i < v.blocks.size(); ++i) {
      absl::StatusOr<BufferPtr> b = store.GetBlock(key, static_cast<uint32_t>(i));
      ASSERT_TRUE(b.ok()) << key.DebugString() << " block " << i << ": " << b.status();
      ASSERT_EQ((*b)->view(), v.blocks[i]) << key.DebugString() << " block " << i;
    }
  }

  TempDir dir_;
  FakeClock clock_;
};

TEST_F(StoreTest, TwoPhasePutBecomesVisibleOnlyAtCommit) {
  std::unique_ptr<Store> store = OpenStore(Options());
  TestVersion v = MakeVersion(Key("acme", "c1", 1), 3, 5000, 1);
  absl::StatusOr<PutReservation> r = store->BeginPut(v.manifest.key(), v.sizes());
  ASSERT_TRUE(r.ok()) << r.status();
  for (size_t i = 0; i < v.blocks.size(); ++i) {
    // Two chunks per block.
    absl::string_view b = v.blocks[i];
    ASSERT_TRUE(store->WriteChunk(r->put_id, i, 0, b.substr(0, 1000)).ok());
    EXPECT_EQ(store->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
    ASSERT_TRUE(store->WriteChunk(r->put_id, i, 1000, b.substr(1000)).ok());
  }
  EXPECT_EQ(store->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetBlock(VersionKey::FromProto(v.manifest.key()), 0).status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<v1::Manifest> committed = store->CommitPut(r->put_id, v.manifest);
  ASSERT_TRUE(committed.ok()) << committed.status();
  EXPECT_EQ(committed->created_unix_micros(), absl::ToUnixMicros(clock_.Now()));
  ExpectVersion(*store, v);
  // The reservation is gone.
  EXPECT_EQ(store->CommitPut(r->put_id, v.manifest).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->AbortPut(r->put_id).code(), absl::StatusCode::kNotFound);
  StoreStats stats = store->Stats();
  EXPECT_EQ(stats.open_puts, 0u);
  EXPECT_EQ(stats.staging_bytes, 0u);
  EXPECT_EQ(stats.rocksdb_objects, 1u) << "write-through reaches RocksDB at commit";
}

TEST_F(StoreTest, AbortedAndExpiredPutsAreNeverVisible) {
  std::unique_ptr<Store> store = OpenStore(Options());
  TestVersion v = MakeVersion(Key("acme", "c1", 1), 2, 1000, 2);
  absl::StatusOr<PutReservation> r = store->BeginPut(v.manifest.key(), v.sizes());
  ASSERT_TRUE(r.ok());
  for (size_t i = 0; i < v.blocks.size(); ++i) {
    ASSERT_TRUE(store->WriteChunk(r->put_id, i, 0, v.blocks[i]).ok());
  }
  ASSERT_TRUE(store->AbortPut(r->put_id).ok());
  EXPECT_EQ(store->CommitPut(r->put_id, v.manifest).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);

  // Uncommitted past the deadline: aborted by maintenance.
  absl::StatusOr<PutReservation> r2 = store->BeginPut(v.manifest.key(), v.sizes());
  ASSERT_TRUE(r2.ok());
  for (size_t i = 0; i < v.blocks.size(); ++i) {
    ASSERT_TRUE(store->WriteChunk(r2->put_id, i, 0, v.blocks[i]).ok());
  }
  clock_.Advance(store->options().put_timeout + absl::Seconds(1));
  store->RunMaintenance();
  EXPECT_EQ(store->Stats().open_puts, 0u);
  EXPECT_EQ(store->CommitPut(r2->put_id, v.manifest).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Stats().staging_bytes, 0u);

  // Nothing of it survives a restart either.
  store.reset();
  store = OpenStore(Options());
  EXPECT_EQ(store->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Stats().rocksdb_objects, 0u);
}

TEST_F(StoreTest, CommitChecksEveryBlock) {
  std::unique_ptr<Store> store = OpenStore(Options());
  TestVersion v = MakeVersion(Key("acme", "c1", 1), 2, 1000, 3);

  // Missing bytes.
  absl::StatusOr<PutReservation> r = store->BeginPut(v.manifest.key(), v.sizes());
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(store->WriteChunk(r->put_id, 0, 0, v.blocks[0]).ok());
  ASSERT_TRUE(
      store->WriteChunk(r->put_id, 1, 0, absl::string_view(v.blocks[1]).substr(0, 10)).ok());
  EXPECT_EQ(store->CommitPut(r->put_id, v.manifest).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // A byte flipped in transit.
  r = store->BeginPut(v.manifest.key(), v.sizes());
  ASSERT_TRUE(r.ok());
  std::string bad = v.blocks[1];
  bad[500] ^= 0x40;
  ASSERT_TRUE(store->WriteChunk(r->put_id, 0, 0, v.blocks[0]).ok());
  ASSERT_TRUE(store->WriteChunk(r->put_id, 1, 0, bad).ok());
  EXPECT_EQ(store->CommitPut(r->put_id, v.manifest).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store->Stats().checksum_failures, 1u);

  // Blocks swapped (both valid, wrong places).
  r = store->BeginPut(v.manifest.key(), v.sizes());
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(store->WriteChunk(r->put_id, 0, 0, v.blocks[1]).ok());
  ASSERT_TRUE(store->WriteChunk(r->put_id, 1, 0, v.blocks[0]).ok());
  EXPECT_EQ(store->CommitPut(r->put_id, v.manifest).status().code(), absl::StatusCode::kDataLoss);

  // A manifest for another key.
  r = store->BeginPut(v.manifest.key(), v.sizes());
  ASSERT_TRUE(r.ok());
  for (size_t i = 0; i < 2; ++i) ASSERT_TRUE(store->WriteChunk(r->put_id, i, 0, v.blocks[i]).ok());
  v1::Manifest other = v.manifest;
  other.mutable_key()->set_turn(9);
  absl::Status s = store->CommitPut(r->put_id, other).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("manifest.key"), std::string::npos) << s;

  // Out-of-order and overrunning chunks.
  r = store->BeginPut(v.manifest.key(), v.sizes());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(store->WriteChunk(r->put_id, 0, 5, "abc").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->WriteChunk(r->put_id, 2, 0, "abc").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->WriteChunk(r->put_id, 0, 0, std::string(v.blocks[0].size() + 1, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(store->AbortPut(r->put_id).ok());

  EXPECT_EQ(store->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  StoreStats stats = store->Stats();
  EXPECT_EQ(stats.open_puts, 0u);
  EXPECT_EQ(stats.staging_bytes, 0u);
}

TEST_F(StoreTest, BadBeginPutArgumentsAreInvalid) {
  std::unique_ptr<Store> store = OpenStore(Options());
  std::vector<uint64_t> ok_sizes = {1000};
  EXPECT_EQ(store->BeginPut(Key("", "c", 1), ok_sizes).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->BeginPut(Key("t", "", 1), ok_sizes).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint64_t> tiny = {10};
  EXPECT_EQ(store->BeginPut(Key("t", "c", 1), tiny).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<uint64_t> huge = {uint64_t{1} << 40};
  absl::Status s = store->BeginPut(Key("t", "c", 1), huge).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("block_sizes[0]"), std::string::npos) << s;
  std::vector<uint64_t> many(store->options().max_blocks_per_version + 1, 100);
  EXPECT_EQ(store->BeginPut(Key("t", "c", 1), many).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->BeginPut(Key("t", "c", 1), ok_sizes, absl::Hours(24 * 365)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Staging memory is bounded.
  std::vector<uint64_t> big = {uint64_t{200} << 20, uint64_t{200} << 20, uint64_t{200} << 20,
                               uint64_t{200} << 20, uint64_t{200} << 20, uint64_t{200} << 20};
  EXPECT_EQ(store->BeginPut(Key("t", "c", 1), big).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store->Stats().open_puts, 0u);
}

TEST_F(StoreTest, EvictionKeepsDramUnderHighWatermarkAndServesFromRocksDb) {
  std::unique_ptr<Store> store = OpenStore(Options());
  const uint64_t high = (1 << 20) * 8 / 10;
  std::vector<TestVersion> versions;
  for (int i = 0; i < 30; ++i) {
    versions.push_back(MakeVersion(Key("acme", absl::StrCat("conv", i), 1), 2, 50000, 100 + i));
    absl::StatusOr<v1::Manifest> m = store->Put(versions.back().manifest, versions.back().views());
    ASSERT_TRUE(m.ok()) << m.status();
    StoreStats stats = store->Stats();
    ASSERT_LE(stats.dram_bytes, high) << "after put " << i;
  }
  StoreStats stats = store->Stats();
  EXPECT_GT(stats.evictions, 0u);
  EXPECT_EQ(stats.rocksdb_objects, 30u);
  EXPECT_LT(stats.dram_objects, 30u);
  for (const TestVersion& v : versions) ExpectVersion(*store, v);
}

TEST_F(StoreTest, PinnedVersionsStayInDram) {
  std::unique_ptr<Store> store = OpenStore(Options());
  TestVersion pinned = MakeVersion(Key("acme", "pinned", 1), 2, 50000, 7);
  ASSERT_TRUE(store->Put(pinned.manifest, pinned.views()).ok());
  absl::StatusOr<Lease> lease = store->Pin(pinned.manifest.key(), absl::Seconds(30));
  ASSERT_TRUE(lease.ok()) << lease.status();
  for (int i = 0; i < 30; ++i) {
    TestVersion v = MakeVersion(Key("acme", absl::StrCat("c", i), 1), 2, 50000, 200 + i);
    ASSERT_TRUE(store->Put(v.manifest, v.views()).ok());
  }
  // Delete the pinned version's disk copy behind the store's back: a read
  // still succeeds only if it is served from DRAM.
  RocksDbTier* rocks = store->rocksdb_for_testing();
  ASSERT_TRUE(rocks->DeleteVersion(VersionKey::FromProto(pinned.manifest.key())).ok());
  ExpectVersion(*store, pinned);
  EXPECT_EQ(store->Delete(pinned.manifest.key()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store->Unpin(lease->lease_id).ok());
  EXPECT_EQ(store->Unpin(lease->lease_id).code(), absl::StatusCode::kNotFound);
  absl::StatusOr<int> deleted = store->Delete(pinned.manifest.key());
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 1);
}

TEST_F(StoreTest, PinLoadsAnEvictedVersionIntoDram) {
  std::unique_ptr<Store> store = OpenStore(Options());
  TestVersion first = MakeVersion(Key("acme", "first", 1), 2, 50000, 8);
  ASSERT_TRUE(store->Put(first.manifest, first.views()).ok());
  for (int i = 0; i < 20; ++i) {
    TestVersion v = MakeVersion(Key("acme", absl::StrCat("c", i), 1), 2, 50000, 300 + i);
    ASSERT_TRUE(store->Put(v.manifest, v.views()).ok());
  }
  uint64_t dram_objects = store->Stats().dram_objects;
  ASSERT_TRUE(store->Pin(first.manifest.key()).ok());
  EXPECT_GE(store->Stats().dram_objects, 1u);
  ASSERT_TRUE(store->rocksdb_for_testing()
                  ->DeleteVersion(VersionKey::FromProto(first.manifest.key()))
                  .ok());
  ExpectVersion(*store, first);  // Only possible from DRAM now.
  (void)dram_objects;
}

TEST_F(StoreTest, LeasesExpire) {
  std::unique_ptr<Store> store = OpenStore(Options());
  TestVersion v = MakeVersion(Key("acme", "c", 1), 1, 1000, 9);
  ASSERT_TRUE(store->Put(v.manifest, v.views()).ok());
  absl::StatusOr<Lease> lease = store->Pin(v.manifest.key(), absl::Seconds(5));
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(lease->expires, clock_.Now() + absl::Seconds(5));
  EXPECT_EQ(store->Stats().active_leases, 1u);
  clock_.Advance(absl::Seconds(4));
  store->RunMaintenance();
  EXPECT_EQ(store->Delete(v.manifest.key()).status().code(), absl::StatusCode::kFailedPrecondition);
  clock_.Advance(absl::Seconds(2));
  store->RunMaintenance();
  EXPECT_EQ(store->Stats().active_leases, 0u);
  EXPECT_EQ(store->Unpin(lease->lease_id).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store->Delete(v.manifest.key()).ok());
  EXPECT_EQ(store->Pin(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Pin(v.manifest.key(), absl::Hours(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, IdleVersionsExpireByTtlUnlessPinnedOrUsed) {
  StoreOptions o = Options();
  o.default_ttl = absl::Seconds(100);
  std::unique_ptr<Store> store = OpenStore(o);
  TestVersion idle = MakeVersion(Key("acme", "idle", 1), 1, 1000, 10);
  TestVersion used = MakeVersion(Key("acme", "used", 1), 1, 1000, 11);
  TestVersion pinned = MakeVersion(Key("acme", "pinned", 1), 1, 1000, 12);
  TestVersion forever = MakeVersion(Key("acme", "forever", 1), 1, 1000, 13);
  ASSERT_TRUE(store->Put(idle.manifest, idle.views()).ok());
  ASSERT_TRUE(store->Put(used.manifest, used.views()).ok());
  ASSERT_TRUE(store->Put(pinned.manifest, pinned.views()).ok());
  ASSERT_TRUE(store->Put(forever.manifest, forever.views(), absl::Hours(24 * 29)).ok());
  ASSERT_TRUE(store->Pin(pinned.manifest.key(), absl::Minutes(10)).ok());
  clock_.Advance(absl::Seconds(60));
  ASSERT_TRUE(store->Lookup(used.manifest.key()).ok());  // Resets its idle time.
  clock_.Advance(absl::Seconds(50));
  store->RunMaintenance();
  EXPECT_EQ(store->Lookup(idle.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  ExpectVersion(*store, used);
  ExpectVersion(*store, pinned);
  ExpectVersion(*store, forever);
  EXPECT_EQ(store->Stats().ttl_expirations, 1u);
  // Gone from disk too: not back after a restart.
  store.reset();
  store = OpenStore(o);
  EXPECT_EQ(store->Lookup(idle.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  ExpectVersion(*store, forever);
}

TEST_F(StoreTest, RestartServesEveryCommittedVersionByteExact) {
  std::vector<TestVersion> versions;
  {
    std::unique_ptr<Store> store = OpenStore(Options());
    for (int i = 0; i < 12; ++i) {
      versions.push_back(
          MakeVersion(Key(i % 2 ? "acme" : "beta", absl::StrCat("conv", i / 3), i % 3), 3,
                      20000 + 1000 * i, 400 + i));
      ASSERT_TRUE(store->Put(versions.back().manifest, versions.back().views()).ok());
    }
    // An open put at "crash" time must not appear after the restart.
    TestVersion open = MakeVersion(Key("acme", "open", 1), 1, 1000, 499);
    absl::StatusOr<PutReservation> r = store->BeginPut(open.manifest.key(), open.sizes());
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE(store->WriteChunk(r->put_id, 0, 0, open.blocks[0]).ok());
  }
  std::unique_ptr<Store> store = OpenStore(Options());
  StoreStats stats = store->Stats();
  EXPECT_EQ(stats.rocksdb_objects, 12u);
  EXPECT_EQ(stats.dram_objects, 0u);
  for (const TestVersion& v : versions) ExpectVersion(*store, v);
  EXPECT_EQ(store->Lookup(Key("acme", "open", 1)).status().code(), absl::StatusCode::kNotFound);
  // Latest turn survives too.
  absl::StatusOr<std::shared_ptr<const v1::Manifest>> latest =
      store->Lookup(Key("beta", "conv0", 0), /*latest=*/true);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ((*latest)->key().turn(), 2u);
}

TEST_F(StoreTest, WriteBackFlushesOnEvictionAndClose) {
  StoreOptions o = Options();
  o.write_mode = WriteMode::kWriteBack;
  std::vector<TestVersion> versions;
  {
    std::unique_ptr<Store> store = OpenStore(o);
    for (int i = 0; i < 25; ++i) {
      versions.push_back(MakeVersion(Key("acme", absl::StrCat("wb", i), 1), 2, 40000, 500 + i));
      ASSERT_TRUE(store->Put(versions.back().manifest, versions.back().views()).ok());
      ASSERT_LE(store->Stats().dram_bytes, (1u << 20) * 8 / 10);
    }
    for (const TestVersion& v : versions) ExpectVersion(*store, v);
    EXPECT_GT(store->Stats().evictions, 0u);
  }
  std::unique_ptr<Store> store = OpenStore(o);
  EXPECT_EQ(store->Stats().rocksdb_objects, 25u);
  for (const TestVersion& v : versions) ExpectVersion(*store, v);
}

TEST_F(StoreTest, ReplacingAVersionDropsItsOldBlocks) {
  StoreOptions o = Options();
  TestVersion big = MakeVersion(Key("acme", "c", 1), 4, 3000, 20);
  TestVersion small = MakeVersion(Key("acme", "c", 1), 2, 3000, 21);
  {
    std::unique_ptr<Store> store = OpenStore(o);
    ASSERT_TRUE(store->Put(big.manifest, big.views()).ok());
    ASSERT_TRUE(store->Put(small.manifest, small.views()).ok());
    ExpectVersion(*store, small);
    EXPECT_EQ(store->Stats().rocksdb_bytes, small.bytes());
    RocksDbTier* rocks = store->rocksdb_for_testing();
    EXPECT_EQ(rocks->ReadBlock(VersionKey::FromProto(big.manifest.key()), 3).status().code(),
              absl::StatusCode::kNotFound);
  }
  std::unique_ptr<Store> store = OpenStore(o);
  ExpectVersion(*store, small);
}

TEST_F(StoreTest, QuotaRejectsOnlyTheTenantOverIt) {
  StoreOptions o = Options();
  o.default_tenant_quota_bytes = 0;
  o.tenant_quota_bytes = {{"small", 25000}};
  std::unique_ptr<Store> store = OpenStore(o);
  TestVersion a = MakeVersion(Key("small", "a", 1), 2, 5000, 30);   // ~10 KB
  TestVersion b = MakeVersion(Key("small", "b", 1), 2, 5000, 31);   // ~10 KB
  TestVersion c = MakeVersion(Key("small", "c", 1), 2, 5000, 32);   // over 25 KB
  TestVersion d = MakeVersion(Key("other", "d", 1), 10, 5000, 33);  // unlimited tenant
  ASSERT_TRUE(store->Put(a.manifest, a.views()).ok());
  ASSERT_TRUE(store->Put(b.manifest, b.views()).ok());
  absl::Status s = store->Put(c.manifest, c.views()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("small"), std::string::npos);
  ASSERT_TRUE(store->Put(d.manifest, d.views()).ok());
  ExpectVersion(*store, a);
  ExpectVersion(*store, b);
  ExpectVersion(*store, d);
  EXPECT_EQ(store->Lookup(c.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store->Delete(a.manifest.key()).ok());
  ASSERT_TRUE(store->Put(c.manifest, c.views()).ok()) << "space freed by the delete";
  // Usage is rebuilt from disk on restart.
  store.reset();
  store = OpenStore(o);
  EXPECT_EQ(store->Put(a.manifest, a.views()).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(StoreTest, UnknownTenantsAreRefusedWhenConfigured) {
  StoreOptions o = Options();
  o.tenant_quota_bytes = {{"acme", 0}};
  o.allow_unknown_tenants = false;
  std::unique_ptr<Store> store = OpenStore(o);
  TestVersion v = MakeVersion(Key("mallory", "c", 1), 1, 100, 40);
  absl::Status s = store->Put(v.manifest, v.views()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(s.message().find("mallory"), std::string::npos);
  EXPECT_EQ(store->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kPermissionDenied);
  TestVersion ok = MakeVersion(Key("acme", "c", 1), 1, 100, 41);
  EXPECT_TRUE(store->Put(ok.manifest, ok.views()).ok());
}

// Flips one byte of a block's value inside RocksDB (through the RocksDB API,
// so RocksDB's own checksums are valid and only ours can catch it).
TEST_F(StoreTest, FlippedByteInRocksDbIsDataLoss) {
  StoreOptions o = Options(TierMode::kRocksDbOnly);
  TestVersion v = MakeVersion(Key("acme", "c", 1), 2, 20000, 50);
  VersionKey key = VersionKey::FromProto(v.manifest.key());
  std::unique_ptr<Store> store = OpenStore(o);
  ASSERT_TRUE(store->Put(v.manifest, v.views()).ok());
  rocksdb::DB* db = store->rocksdb_for_testing()->db();
  std::string value;
  ASSERT_TRUE(db->Get({}, RocksDbTier::BlockKey(key, 1), &value).ok());
  value[value.size() / 2] ^= 0x01;
  ASSERT_TRUE(db->Put({}, RocksDbTier::BlockKey(key, 1), value).ok());
  absl::StatusOr<BufferPtr> b0 = store->GetBlock(key, 0);
  ASSERT_TRUE(b0.ok());
  EXPECT_EQ((*b0)->view(), v.blocks[0]);
  EXPECT_EQ(store->GetBlock(key, 1).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store->Stats().checksum_failures, 1u);
  // A corrupt manifest is DATA_LOSS for the whole version after a restart.
  ASSERT_TRUE(db->Get({}, RocksDbTier::ManifestKey(key), &value).ok());
  value[value.size() - 3] ^= 0x20;
  ASSERT_TRUE(db->Put({}, RocksDbTier::ManifestKey(key), value).ok());
  store.reset();
  store = OpenStore(o);
  EXPECT_EQ(store->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store->GetBlock(key, 0).status().code(), absl::StatusCode::kDataLoss);
  // It can still be deleted.
  EXPECT_TRUE(store->Delete(v.manifest.key()).ok());
}

// Flips one byte inside a RocksDB blob file on disk, below RocksDB.
TEST_F(StoreTest, FlippedByteInBlobFileIsDataLoss) {
  StoreOptions o = Options(TierMode::kRocksDbOnly);
  TestVersion v = MakeVersion(Key("acme", "c", 1), 1, 200000, 51);
  VersionKey key = VersionKey::FromProto(v.manifest.key());
  {
    std::unique_ptr<Store> store = OpenStore(o);
    ASSERT_TRUE(store->Put(v.manifest, v.views()).ok());
    ASSERT_TRUE(store->Flush().ok());  // Memtable -> SST + blob file.
  }
  std::string blob;
  for (const auto& entry : std::filesystem::directory_iterator(o.rocksdb_path)) {
    if (entry.path().extension() == ".blob") blob = entry.path().string();
  }
  ASSERT_FALSE(blob.empty()) << "no blob file: blob storage is not enabled";
  {
    std::fstream f(blob, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    std::streamoff size = f.tellg();
    ASSERT_GT(size, 150000);
    f.seekg(size / 2);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x04;
    f.seekp(size / 2);
    f.write(&c, 1);
  }
  std::unique_ptr<Store> store = OpenStore(o);
  EXPECT_EQ(store->GetBlock(key, 0).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(StoreTest, LatestLookupAndDeleteAllTurns) {
  StoreOptions o = Options();
  o.keep_versions = 0;  // Keep all three turns (the version GC has its own test).
  std::unique_ptr<Store> store = OpenStore(o);
  for (uint32_t turn : {1u, 2u, 5u}) {
    TestVersion v = MakeVersion(Key("acme", "conv", turn), 1, 100, 60 + turn);
    ASSERT_TRUE(store->Put(v.manifest, v.views()).ok());
  }
  TestVersion neighbour = MakeVersion(Key("acme", "conv2", 9), 1, 100, 69);
  ASSERT_TRUE(store->Put(neighbour.manifest, neighbour.views()).ok());
  absl::StatusOr<std::shared_ptr<const v1::Manifest>> latest =
      store->Lookup(Key("acme", "conv", 0), true);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ((*latest)->key().turn(), 5u);
  EXPECT_EQ(store->Lookup(Key("acme", "conv", 3)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Lookup(Key("acme", "con", 0), true).status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<int> n = store->Delete(Key("acme", "conv", 0), /*all_turns=*/true);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 3);
  EXPECT_EQ(store->Lookup(Key("acme", "conv", 0), true).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(store->Lookup(neighbour.manifest.key()).ok());
  EXPECT_EQ(store->Delete(Key("acme", "conv", 1)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, DramOnlyEvictionDropsVersions) {
  std::unique_ptr<Store> store = OpenStore(Options(TierMode::kDramOnly));
  std::vector<TestVersion> versions;
  for (int i = 0; i < 20; ++i) {
    versions.push_back(MakeVersion(Key("acme", absl::StrCat("d", i), 1), 1, 100000, 70 + i));
    ASSERT_TRUE(store->Put(versions.back().manifest, versions.back().views()).ok());
  }
  StoreStats stats = store->Stats();
  EXPECT_LE(stats.dram_bytes, (1u << 20) * 8 / 10);
  EXPECT_EQ(stats.rocksdb_objects, 0u);
  EXPECT_EQ(store->Lookup(versions[0].manifest.key()).status().code(), absl::StatusCode::kNotFound);
  ExpectVersion(*store, versions.back());
  // Bigger than DRAM can ever hold.
  TestVersion huge = MakeVersion(Key("acme", "huge", 1), 1, 900000, 99);
  EXPECT_EQ(store->Put(huge.manifest, huge.views()).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_F(StoreTest, DrainingRefusesNewPutsButCommitsOpenOnes) {
  std::unique_ptr<Store> store = OpenStore(Options());
  TestVersion v = MakeVersion(Key("acme", "c", 1), 1, 1000, 80);
  absl::StatusOr<PutReservation> r = store->BeginPut(v.manifest.key(), v.sizes());
  ASSERT_TRUE(r.ok());
  store->BeginDrain();
  EXPECT_EQ(store->BeginPut(Key("acme", "d", 1), v.sizes()).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(store->WaitForOpenPuts(absl::Milliseconds(10)), 1u);
  std::thread committer([&] {
    // Not a wait for anything: a head start so that the commit usually lands
    // while WaitForOpenPuts below is blocked (if it lands first, the wait
    // returns 0 at once and the test still checks the same outcome).
    absl::SleepFor(absl::Milliseconds(50));
    ASSERT_TRUE(store->WriteChunk(r->put_id, 0, 0, v.blocks[0]).ok());
    ASSERT_TRUE(store->CommitPut(r->put_id, v.manifest).ok());
  });
  EXPECT_EQ(store->WaitForOpenPuts(absl::Seconds(10)), 0u);
  committer.join();
  ExpectVersion(*store, v);
}

TEST_F(StoreTest, ConcurrentWritersAndReaders) {
  std::unique_ptr<Store> store = OpenStore(Options());
  constexpr int kWriters = 4;
  constexpr int kPerWriter = 15;
  std::vector<std::vector<TestVersion>> versions(kWriters);
  for (int w = 0; w < kWriters; ++w) {
    for (int i = 0; i < kPerWriter; ++i) {
      versions[w].push_back(
          MakeVersion(Key("acme", absl::StrCat("w", w, "-", i), 1), 3, 15000, 1000 + w * 100 + i));
    }
  }
  std::atomic<int> committed[kWriters];
  for (auto& c : committed) c = 0;
  std::atomic<bool> done{false};
  std::atomic<int> bad_reads{0};
  std::atomic<int> good_reads{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < kPerWriter; ++i) {
        const TestVersion& v = versions[w][i];
        absl::StatusOr<PutReservation> r = store->BeginPut(v.manifest.key(), v.sizes());
        ASSERT_TRUE(r.ok()) << r.status();
        for (size_t b = 0; b < v.blocks.size(); ++b) {
          ASSERT_TRUE(store->WriteChunk(r->put_id, b, 0, v.blocks[b]).ok());
        }
        ASSERT_TRUE(store->CommitPut(r->put_id, v.manifest).ok());
        committed[w] = i + 1;
      }
    });
  }
  for (int rd = 0; rd < 4; ++rd) {
    threads.emplace_back([&, rd] {
      std::mt19937 rng(rd);
      while (!done) {
        int w = rng() % kWriters;
        int n = committed[w];
        if (n == 0) continue;
        const TestVersion& v = versions[w][rng() % n];
        VersionKey key = VersionKey::FromProto(v.manifest.key());
        uint32_t b = rng() % v.blocks.size();
        absl::StatusOr<BufferPtr> got = store->GetBlock(key, b);
        if (!got.ok() || (*got)->view() != v.blocks[b]) {
          ++bad_reads;
        } else {
          ++good_reads;
        }
      }
    });
  }
  for (int w = 0; w < kWriters; ++w) threads[w].join();
  done = true;
  for (size_t t = kWriters; t < threads.size(); ++t) threads[t].join();
  EXPECT_EQ(bad_reads, 0);
  EXPECT_GT(good_reads, 0);
  for (const auto& vs : versions) {
    for (const TestVersion& v : vs) ExpectVersion(*store, v);
  }
  EXPECT_LE(store->Stats().dram_bytes, (1u << 20) * 8 / 10);
}

}  // namespace
}  // namespace krul::kvstore
