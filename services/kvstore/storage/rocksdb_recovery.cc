#include "kvstore/storage/rocksdb_recovery.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/sst_file_reader.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/table_properties.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "krul/base/log.h"
#include "krul/kvformat/manifest.h"
#include "kvstore/metrics.h"

namespace krul::kvstore {
namespace {

namespace fs = std::filesystem;

constexpr char kManifestPrefix = 'm';

// Moves every entry of `path` (but earlier quarantines) into a new
// subdirectory; returns its path.
absl::StatusOr<std::string> Quarantine(const std::string& path) {
  const std::string base = absl::StrCat(path, "/quarantine-", absl::ToUnixSeconds(absl::Now()));
  std::string dir = base;
  std::error_code ec;
  for (int i = 1; fs::exists(dir, ec); ++i) dir = absl::StrCat(base, "-", i);
  if (!fs::create_directory(dir, ec)) {
    return absl::UnavailableError(
        absl::StrCat("cannot create quarantine directory ", dir, ": ", ec.message()));
  }
  for (const fs::directory_entry& entry : fs::directory_iterator(path, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("quarantine-", 0) == 0) continue;
    fs::rename(entry.path(), fs::path(dir) / name, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot move ", entry.path().string(), " to ", dir, ": ", ec.message()));
    }
  }
  if (ec) return absl::UnavailableError(absl::StrCat("cannot list ", path, ": ", ec.message()));
  return dir;
}

// A damaged table whose footer or index cannot be read cannot be opened, and
// then every scan over its level fails. Such a file is set aside as
// <name>.damaged and replaced by a valid stub table of exactly its size
// (RocksDB reads a table through the size its MANIFEST records), which
// SalvageReader's table filter then skips: the rest of the database becomes
// scannable. False when no stub fits (the file is smaller than any table).
constexpr char kStubProperty[] = "krul.recovery.stub";

bool ReplaceWithStub(const std::string& path, const rocksdb::Options& options) {
  std::error_code ec;
  const uint64_t size = fs::file_size(path, ec);
  if (ec) return false;
  const std::string aside = path + ".damaged";
  const std::string stub = path + ".stub";
  rocksdb::Options so = options;
  so.compression = rocksdb::kNoCompression;
  // Marks the stub so the table filter recognizes it.
  class Marker : public rocksdb::TablePropertiesCollector {
   public:
    rocksdb::Status AddUserKey(const rocksdb::Slice&, const rocksdb::Slice&, rocksdb::EntryType,
                               rocksdb::SequenceNumber, uint64_t) override {
      return rocksdb::Status::OK();
    }
    rocksdb::Status Finish(rocksdb::UserCollectedProperties* p) override {
      p->emplace(kStubProperty, "1");
      return rocksdb::Status::OK();
    }
    rocksdb::UserCollectedProperties GetReadableProperties() const override { return {}; }
    const char* Name() const override { return "KrulRecoveryStub"; }
  };
  class MarkerFactory : public rocksdb::TablePropertiesCollectorFactory {
   public:
    rocksdb::TablePropertiesCollector* CreateTablePropertiesCollector(
        rocksdb::TablePropertiesCollectorFactory::Context) override {
      return new Marker();
    }
    const char* Name() const override { return "KrulRecoveryStubFactory"; }
  };
  so.table_properties_collector_factories = {std::make_shared<MarkerFactory>()};
  // The size grows with the value by one byte per byte (no compression),
  // up to varint widths: a few rounds converge.
  uint64_t filler = 0;
  for (int round = 0; round < 8; ++round) {
    rocksdb::SstFileWriter writer(rocksdb::EnvOptions(), so);
    if (!writer.Open(stub).ok() ||
        !writer.Put(std::string(1, '\0'), std::string(filler, 'k')).ok() || !writer.Finish().ok()) {
      fs::remove(stub, ec);
      return false;
    }
    const uint64_t got = fs::file_size(stub, ec);
    if (ec) return false;
    if (got == size) {
      fs::rename(path, aside, ec);
      if (ec) return false;
      fs::rename(stub, path, ec);
      return !ec;
    }
    if (got > size && filler == 0) break;  // Smaller than any table.
    filler = got < size ? filler + (size - got) : filler - std::min(filler, got - size);
  }
  fs::remove(stub, ec);
  return false;
}

// The table files of `dir` that cannot be read whole (SstFileReader open and
// checksum verification), by file number; counted in the report.
absl::flat_hash_set<uint64_t> FindDamagedTables(const std::string& dir,
                                                const rocksdb::Options& options,
                                                RecoveryReport* report) {
  absl::flat_hash_set<uint64_t> damaged;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".sst") continue;
    uint64_t number = 0;
    if (!absl::SimpleAtoi(entry.path().stem().string(), &number)) continue;
    rocksdb::SstFileReader reader(options);
    rocksdb::Status s = reader.Open(entry.path().string());
    const bool opens = s.ok();
    if (s.ok()) s = reader.VerifyChecksum();
    if (s.ok()) continue;
    damaged.insert(number);
    ++report->damaged_files;
    KRUL_LOG(ERROR) << "kvstore recovery: " << entry.path().string()
                    << " is damaged: " << s.ToString();
    if (!opens && !ReplaceWithStub(entry.path().string(), options)) {
      KRUL_LOG(WARNING) << "kvstore recovery: no stub fits " << entry.path().string()
                        << "; versions in its key range may be lost";
    }
  }
  return damaged;
}

// Reads versions from the quarantined database. Scans skip the damaged
// tables (ReadOptions::table_filter), so keys they do not hold are read
// from the intact tables with RocksDB's own precedence (newest first) and
// blob values resolved. A damaged table that cannot even be opened breaks
// scans; then versions are listed from each intact table on its own and read
// by point lookups, which lose what lies in the damaged table's key range.
class SalvageReader {
 public:
  SalvageReader(rocksdb::DB* db, absl::flat_hash_set<uint64_t> damaged)
      : db_(db), damaged_(std::move(damaged)) {
    scan_.verify_checksums = true;
    scan_.table_filter = [this](const rocksdb::TableProperties& p) {
      return !damaged_.contains(p.orig_file_number) &&
             !p.user_collected_properties.contains(kStubProperty);
    };
    point_.verify_checksums = true;
  }

  // Every manifest key: by a filtered scan, or (when that fails) from each
  // intact table file in `dir`.
  std::set<std::string> ListManifestKeys(const std::string& dir, const rocksdb::Options& options) {
    std::set<std::string> keys;
    const std::string start(1, kManifestPrefix);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(scan_));
    for (it->Seek(start); it->Valid() && it->key().starts_with(start); it->Next()) {
      keys.insert(it->key().ToString());
    }
    if (it->status().ok()) return keys;
    KRUL_LOG(WARNING) << "kvstore recovery: a scan cannot pass the damage ("
                      << it->status().ToString()
                      << "); listing each intact table and reading by point lookups";
    scans_work_ = false;
    std::error_code ec;
    for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
      uint64_t number = 0;
      if (entry.path().extension() != ".sst" ||
          !absl::SimpleAtoi(entry.path().stem().string(), &number) || damaged_.contains(number)) {
        continue;
      }
      rocksdb::SstFileReader reader(options);
      if (!reader.Open(entry.path().string()).ok()) continue;
      std::unique_ptr<rocksdb::Iterator> t(reader.NewIterator(point_));
      for (t->Seek(start); t->Valid() && t->key().starts_with(start); t->Next()) {
        keys.insert(t->key().ToString());
      }
    }
    return keys;
  }

  // The value of `key`; NOT_FOUND when absent (deleted), DATA_LOSS when it
  // cannot be read.
  absl::StatusOr<std::string> Get(const std::string& key) {
    if (scans_work_) {
      if (it_ == nullptr) it_.reset(db_->NewIterator(scan_));
      it_->Seek(key);
      if (!it_->status().ok()) return absl::DataLossError(it_->status().ToString());
      if (!it_->Valid() || it_->key() != key) return absl::NotFoundError("absent");
      return it_->value().ToString();
    }
    std::string value;
    rocksdb::Status s = db_->Get(point_, key, &value);
    if (s.IsNotFound()) return absl::NotFoundError("absent");
    if (!s.ok()) return absl::DataLossError(s.ToString());
    return value;
  }

 private:
  rocksdb::DB* const db_;
  const absl::flat_hash_set<uint64_t> damaged_;
  rocksdb::ReadOptions scan_;
  rocksdb::ReadOptions point_;
  bool scans_work_ = true;
  std::unique_ptr<rocksdb::Iterator> it_;
};

// Copies version `key` into `fresh` when its manifest and all its blocks
// read back intact. NOT_FOUND when it no longer exists (deleted).
absl::Status CopyVersion(SalvageReader& reader, const VersionKey& key, RocksDbTier* fresh) {
  absl::StatusOr<std::string> value = reader.Get(RocksDbTier::ManifestKey(key));
  if (!value.ok()) return value.status();
  absl::StatusOr<v1::Manifest> manifest = DecodeStoredManifest(*value);
  if (!manifest.ok()) return manifest.status();
  if (VersionKey::FromProto(manifest->key()) != key) {
    return absl::DataLossError("manifest names another key");
  }
  if (absl::Status v = ValidateManifest(*manifest); !v.ok())
    return absl::DataLossError(v.message());
  std::vector<BufferPtr> blocks;
  for (int i = 0; i < manifest->blocks_size(); ++i) {
    value = reader.Get(RocksDbTier::BlockKey(key, static_cast<uint32_t>(i)));
    if (!value.ok()) {
      return absl::DataLossError(absl::StrCat("block ", i, ": ", value.status().message()));
    }
    if (absl::Status v = VerifyBlock(manifest->blocks(i), *value).status(); !v.ok()) {
      return absl::DataLossError(absl::StrCat("block ", i, ": ", v.message()));
    }
    std::unique_ptr<ByteBuffer> b = ByteBuffer::Allocate(value->size());
    if (b == nullptr) return absl::ResourceExhaustedError("out of memory");
    std::memcpy(b->data(), value->data(), value->size());
    blocks.push_back(BufferPtr(std::move(b)));
  }
  return fresh->WriteVersion(key, *manifest, blocks, /*replace=*/false);
}

// Steps 3 and 4 of the file comment.
void Salvage(const std::string& quarantine, RocksDbTier* fresh, RecoveryReport* report) {
  rocksdb::Options o;
  o.paranoid_checks = false;
  // Table files are opened when first read, so one with a damaged footer
  // does not fail the open.
  o.max_open_files = 64;
  o.skip_checking_sst_file_sizes_on_db_open = true;
  o.verify_sst_unique_id_in_manifest = false;  // Stubs have ids of their own.
  absl::flat_hash_set<uint64_t> damaged = FindDamagedTables(quarantine, o, report);
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::OpenForReadOnly(o, quarantine, &raw);
  if (!s.ok()) {
    KRUL_LOG(ERROR) << "kvstore recovery: the quarantined database cannot be opened ("
                    << s.ToString() << "); nothing can be salvaged from it";
    return;
  }
  std::unique_ptr<rocksdb::DB> old_db(raw);
  {
    SalvageReader reader(old_db.get(), std::move(damaged));
    for (const std::string& raw_key : reader.ListManifestKeys(quarantine, o)) {
      VersionKey key;
      if (!RocksDbTier::ParseManifestKey(raw_key, &key)) continue;
      absl::Status copied = CopyVersion(reader, key, fresh);
      if (copied.ok()) {
        ++report->recovered_versions;
      } else if (copied.code() != absl::StatusCode::kNotFound) {
        ++report->lost_versions;
        KRUL_LOG(WARNING) << "kvstore recovery: " << key.DebugString() << " lost: " << copied;
      }
    }
  }
  old_db->Close().PermitUncheckedError();
}

}  // namespace

absl::StatusOr<std::unique_ptr<RocksDbTier>> OpenRocksDbTier(const RocksDbTierOptions& options,
                                                             bool recover, KvStoreMetrics* metrics,
                                                             RecoveryReport* report) {
  RecoveryReport local;
  if (report == nullptr) report = &local;
  *report = RecoveryReport();
  absl::StatusOr<std::unique_ptr<RocksDbTier>> opened = RocksDbTier::Open(options);
  absl::Status problem = opened.status();
  if (opened.ok()) {
    // Reading every manifest is what ReloadIndex does next; doing it here
    // first catches a damaged table before the store depends on it.
    problem = (*opened)->ForEachManifest([](const VersionKey&, absl::StatusOr<v1::Manifest>) {});
    if (problem.ok()) return opened;
    opened->reset();  // Closes it.
  }
  if (problem.code() != absl::StatusCode::kDataLoss || !recover) return problem;

  report->recovered = true;
  report->cause = std::string(problem.message());
  KRUL_LOG(ERROR) << "kvstore: RocksDB at " << options.path << " is corrupt (" << problem.message()
                  << "); quarantining it and salvaging the intact versions";
  absl::StatusOr<std::string> quarantine = Quarantine(options.path);
  if (!quarantine.ok()) return quarantine.status();
  report->quarantine_path = *quarantine;
  absl::StatusOr<std::unique_ptr<RocksDbTier>> fresh = RocksDbTier::Open(options);
  if (!fresh.ok()) return fresh.status();
  Salvage(*quarantine, fresh->get(), report);
  if (absl::Status s = (*fresh)->Flush(); !s.ok()) return s;
  KRUL_LOG(ERROR) << "kvstore: recovered " << report->recovered_versions << " versions, lost "
                  << report->lost_versions << " (" << report->damaged_files
                  << " damaged table files); the damaged database is kept in "
                  << report->quarantine_path << " (delete it when no longer needed)";
  if (metrics != nullptr) metrics->Recovery(report->recovered_versions, report->lost_versions);
  return fresh;
}

}  // namespace krul::kvstore
