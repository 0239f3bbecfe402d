// Version GC (StoreOptions::keep_versions): a commit deletes the versions of
// its conversation beyond the newest N turns from both tiers, skips pinned
// ones, and leaves other conversations alone.
#include <memory>

#include "gtest/gtest.h"
#include "kv_test_util.h"
#include "kvstore/storage/store.h"

namespace krul::kvstore {
namespace {

using ::krul::testing::Key;
using ::krul::testing::MakeVersion;
using ::krul::testing::TempDir;
using ::krul::testing::TestVersion;

class VersionGcTest : public ::testing::Test {
 protected:
  StoreOptions Options(uint32_t keep) {
    StoreOptions o;
    o.rocksdb_path = dir_.Sub("db");
    o.dram_capacity_bytes = 64 << 20;
    o.rocksdb_write_buffer_bytes = 8 << 20;
    o.default_ttl = absl::ZeroDuration();
    o.keep_versions = keep;
    return o;
  }
  std::unique_ptr<Store> Open(const StoreOptions& o) {
    absl::StatusOr<std::unique_ptr<Store>> s = Store::Open(o, &clock_);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }
  absl::StatusCode LookupCode(Store& store, const std::string& conv, uint32_t turn) {
    return store.Lookup(Key("acme", conv, turn)).status().code();
  }

  TempDir dir_;
  FakeClock clock_;
};

TEST_F(VersionGcTest, KeepsTheNewestTurnsInBothTiers) {
  StoreOptions o = Options(2);
  std::unique_ptr<Store> store = Open(o);
  TestVersion other = MakeVersion(Key("acme", "other", 1), 2, 5000, 100);
  ASSERT_TRUE(store->Put(other.manifest, other.views()).ok());
  std::vector<TestVersion> turns;
  for (uint32_t turn = 1; turn <= 5; ++turn) {
    turns.push_back(MakeVersion(Key("acme", "conv", turn), 2, 5000, turn));
    ASSERT_TRUE(store->Put(turns.back().manifest, turns.back().views()).ok());
    StoreStats s = store->Stats();
    // Never more than two versions of "conv" (plus "other"), in DRAM and on disk.
    EXPECT_EQ(s.dram_objects, std::min<uint64_t>(turn, 2) + 1) << "after turn " << turn;
    EXPECT_EQ(s.rocksdb_objects, std::min<uint64_t>(turn, 2) + 1) << "after turn " << turn;
  }
  EXPECT_EQ(store->Stats().gc_deletions, 3u);
  for (uint32_t turn : {1u, 2u, 3u}) {
    EXPECT_EQ(LookupCode(*store, "conv", turn), absl::StatusCode::kNotFound) << turn;
  }
  EXPECT_EQ(LookupCode(*store, "conv", 4), absl::StatusCode::kOk);
  EXPECT_EQ(LookupCode(*store, "conv", 5), absl::StatusCode::kOk);
  EXPECT_EQ(LookupCode(*store, "other", 1), absl::StatusCode::kOk);

  // Gone from disk too: a restart rebuilds the index from RocksDB alone.
  store.reset();
  store = Open(o);
  EXPECT_EQ(store->Stats().rocksdb_objects, 3u);
  for (uint32_t turn : {1u, 2u, 3u}) {
    EXPECT_EQ(LookupCode(*store, "conv", turn), absl::StatusCode::kNotFound) << turn;
  }
  for (uint32_t turn : {4u, 5u}) {
    VersionKey key = VersionKey::FromProto(turns[turn - 1].manifest.key());
    absl::StatusOr<BufferPtr> b = store->GetBlock(key, 1);
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ((*b)->view(), turns[turn - 1].blocks[1]);
  }
}

TEST_F(VersionGcTest, PinnedVersionsWaitUntilUnpinned) {
  std::unique_ptr<Store> store = Open(Options(1));
  TestVersion v1 = MakeVersion(Key("acme", "conv", 1), 1, 5000, 1);
  ASSERT_TRUE(store->Put(v1.manifest, v1.views()).ok());
  absl::StatusOr<Lease> pin = store->Pin(v1.manifest.key());
  ASSERT_TRUE(pin.ok()) << pin.status();
  TestVersion v2 = MakeVersion(Key("acme", "conv", 2), 1, 5000, 2);
  ASSERT_TRUE(store->Put(v2.manifest, v2.views()).ok());
  // Turn 1 is being restored by someone: it stays.
  EXPECT_EQ(LookupCode(*store, "conv", 1), absl::StatusCode::kOk);
  ASSERT_TRUE(store->Unpin(pin->lease_id).ok());
  TestVersion v3 = MakeVersion(Key("acme", "conv", 3), 1, 5000, 3);
  ASSERT_TRUE(store->Put(v3.manifest, v3.views()).ok());
  EXPECT_EQ(LookupCode(*store, "conv", 1), absl::StatusCode::kNotFound);
  EXPECT_EQ(LookupCode(*store, "conv", 2), absl::StatusCode::kNotFound);
  EXPECT_EQ(LookupCode(*store, "conv", 3), absl::StatusCode::kOk);
}

TEST_F(VersionGcTest, ZeroKeepsEveryVersion) {
  std::unique_ptr<Store> store = Open(Options(0));
  for (uint32_t turn = 1; turn <= 4; ++turn) {
    TestVersion v = MakeVersion(Key("acme", "conv", turn), 1, 5000, turn);
    ASSERT_TRUE(store->Put(v.manifest, v.views()).ok());
  }
  for (uint32_t turn = 1; turn <= 4; ++turn) {
    EXPECT_EQ(LookupCode(*store, "conv", turn), absl::StatusCode::kOk) << turn;
  }
  EXPECT_EQ(store->Stats().gc_deletions, 0u);
}

TEST_F(VersionGcTest, WriteBackVersionsAreCollectedBeforeTheyAreFlushed) {
  StoreOptions o = Options(2);
  o.write_mode = WriteMode::kWriteBack;
  {
    std::unique_ptr<Store> store = Open(o);
    for (uint32_t turn = 1; turn <= 6; ++turn) {
      TestVersion v = MakeVersion(Key("acme", "conv", turn), 1, 5000, turn);
      ASSERT_TRUE(store->Put(v.manifest, v.views()).ok());
    }
    EXPECT_EQ(store->Stats().dram_objects, 2u);
  }  // Closing flushes what is dirty.
  std::unique_ptr<Store> store = Open(o);
  EXPECT_EQ(store->Stats().rocksdb_objects, 2u);
  EXPECT_EQ(LookupCode(*store, "conv", 6), absl::StatusCode::kOk);
  EXPECT_EQ(LookupCode(*store, "conv", 4), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace krul::kvstore
