// Recovery of a corrupt RocksDB tier at start-up (storage/rocksdb_recovery.h):
// one damaged .sst file must not keep the store down; the intact versions
// are served byte-exact, the damaged one is NOT_FOUND or DATA_LOSS, never
// wrong bytes, and the recovery shows in the log and the metrics.
#include <prometheus/registry.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kv_test_util.h"
#include "kvstore/metrics.h"
#include "kvstore/storage/store.h"

namespace krul::kvstore {
namespace {

namespace fs = std::filesystem;
using ::krul::testing::Key;
using ::krul::testing::MakeVersion;
using ::krul::testing::TempDir;
using ::krul::testing::TestVersion;

// Value of an unlabelled counter `name` in `metrics`, or -1 when absent.
double CounterValue(const KvStoreMetrics& metrics, const std::string& name) {
  for (const prometheus::MetricFamily& f : metrics.registry()->Collect()) {
    if (f.name == name && !f.metric.empty()) return f.metric[0].counter.value;
  }
  return -1;
}

// The .sst files of `dir`, oldest (lowest file number) first.
std::vector<std::string> TableFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".sst") out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());  // Zero-padded numbers sort as text.
  return out;
}

void FlipBytes(const std::string& path, std::streamoff offset, int count) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.is_open()) << path;
  for (int i = 0; i < count; ++i) {
    f.seekg(offset + i);
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(~c);
    f.seekp(offset + i);
    f.write(&c, 1);
  }
}

enum class Damage { kFirstDataBlock, kFooter };

class RocksDbRecoveryTest : public ::testing::TestWithParam<Damage> {
 protected:
  StoreOptions Options() {
    StoreOptions o;
    o.tiers = TierMode::kRocksDbOnly;
    o.rocksdb_path = dir_.Sub("db");
    o.rocksdb_write_buffer_bytes = 8 << 20;
    o.default_ttl = absl::ZeroDuration();
    o.keep_versions = 0;
    return o;
  }

  // Three versions, each flushed into a table file of its own; returns the
  // table file that holds versions_[1].
  std::string WriteThreeTables() {
    std::unique_ptr<Store> store = *Store::Open(Options(), &clock_);
    for (uint32_t i = 0; i < 3; ++i) {
      versions_.push_back(MakeVersion(Key("acme", "conv" + std::to_string(i), 1), 2, 6000, i));
      EXPECT_TRUE(store->Put(versions_.back().manifest, versions_.back().views()).ok());
      EXPECT_TRUE(store->Flush().ok());
    }
    std::vector<std::string> tables = TableFiles(Options().rocksdb_path);
    EXPECT_EQ(tables.size(), 3u);
    return tables.size() == 3 ? tables[1] : "";
  }

  void ExpectIntact(Store& store, const TestVersion& v) {
    absl::StatusOr<std::shared_ptr<const v1::Manifest>> m = store.Lookup(v.manifest.key());
    ASSERT_TRUE(m.ok()) << m.status();
    for (size_t i = 0; i < v.blocks.size(); ++i) {
      absl::StatusOr<BufferPtr> b =
          store.GetBlock(VersionKey::FromProto(v.manifest.key()), static_cast<uint32_t>(i));
      ASSERT_TRUE(b.ok()) << b.status();
      EXPECT_EQ((*b)->view(), v.blocks[i]);
    }
  }

  TempDir dir_;
  FakeClock clock_;
  std::vector<TestVersion> versions_;
};

TEST_P(RocksDbRecoveryTest, CorruptTableIsQuarantinedAndTheRestServed) {
  const std::string damaged = WriteThreeTables();
  ASSERT_FALSE(damaged.empty());
  const auto size = static_cast<std::streamoff>(fs::file_size(damaged));
  if (GetParam() == Damage::kFirstDataBlock) {
    FlipBytes(damaged, 8, 16);  // Inside the first data block: its checksum fails.
  } else {
    FlipBytes(damaged, size - 8, 8);  // The magic number: not a table any more.
  }

  // Without recovery the store refuses to start, as before.
  StoreOptions strict = Options();
  strict.rocksdb_recover = false;
  EXPECT_EQ(Store::Open(strict, &clock_).status().code(), absl::StatusCode::kDataLoss);

  KvStoreMetrics metrics;
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(Options(), &clock_, &metrics);
  ASSERT_TRUE(store.ok()) << store.status();
  const RecoveryReport& report = (*store)->recovery();
  EXPECT_TRUE(report.recovered);
  EXPECT_EQ(report.recovered_versions, 2u);
  EXPECT_GE(report.damaged_files + report.lost_versions, 1u);
  ASSERT_TRUE(fs::is_directory(report.quarantine_path)) << report.quarantine_path;
  EXPECT_TRUE(fs::exists(fs::path(report.quarantine_path) / fs::path(damaged).filename()))
      << "the damaged file is kept for inspection";
  ExpectIntact(**store, versions_[0]);
  ExpectIntact(**store, versions_[2]);
  absl::StatusCode lost = (*store)->Lookup(versions_[1].manifest.key()).status().code();
  EXPECT_TRUE(lost == absl::StatusCode::kNotFound || lost == absl::StatusCode::kDataLoss)
      << absl::StatusCodeToString(lost);
  EXPECT_EQ(CounterValue(metrics, "krul_kvstore_quarantined_total"), 1);
  EXPECT_EQ(CounterValue(metrics, "krul_kvstore_recovered_versions_total"), 2);

  // The salvaged database is healthy: new writes work, and the next start
  // needs no recovery.
  TestVersion next = MakeVersion(Key("acme", "conv9", 1), 1, 6000, 9);
  ASSERT_TRUE((*store)->Put(next.manifest, next.views()).ok());
  store->reset();
  absl::StatusOr<std::unique_ptr<Store>> again = Store::Open(Options(), &clock_);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE((*again)->recovery().recovered);
  ExpectIntact(**again, versions_[0]);
  ExpectIntact(**again, versions_[2]);
  ExpectIntact(**again, next);
}

INSTANTIATE_TEST_SUITE_P(Damages, RocksDbRecoveryTest,
                         ::testing::Values(Damage::kFirstDataBlock, Damage::kFooter),
                         [](const ::testing::TestParamInfo<Damage>& p) {
                           return p.param == Damage::kFirstDataBlock ? "DataBlock" : "Footer";
                         });

}  // namespace
}  // namespace krul::kvstore
