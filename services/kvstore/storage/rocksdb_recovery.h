// Recovery of a corrupt RocksDB tier at start-up, so that one damaged .sst
// (or manifest, or blob) file does not keep the whole store down.
//
// OpenRocksDbTier opens the tier and reads every stored manifest (which
// ReloadIndex does anyway). When RocksDB reports corruption on either, the
// database is quarantined and salvaged:
//
//   1. every file of <path> moves into <path>/quarantine-<unix seconds>/
//      (a subdirectory, so it works when <path> is a mount point; RocksDB
//      ignores subdirectories); nothing is deleted;
//   2. a fresh database is created at <path>;
//   3. every .sst file is verified on its own (RocksDB's SstFileReader); a
//      damaged one that cannot even be opened (footer, index) is set aside
//      as <name>.damaged and replaced by an empty stub table of its size;
//      the quarantined database is then opened read-only and scanned with a
//      table filter that skips the damaged tables and the stubs, so every
//      key they do not hold is read from the intact tables, newest first,
//      with blob values resolved (a key whose only copy was in a damaged
//      table is gone; one it had overwritten or deleted comes back in its
//      older, intact form);
//   4. each listed version whose manifest and every block read back intact
//      (RocksDB checksums, then the manifest's own checksums and each
//      block's XXH3 against the manifest) is copied to the fresh database;
//      the others are lost: NOT_FOUND afterwards, never wrong bytes.
//
// A clear ERROR line names the quarantine directory and the counts, and
// KvStoreMetrics::Recovery counts it (krul_kvstore_quarantined_total,
// krul_kvstore_recovered_versions_total, krul_kvstore_lost_versions_total).
// Salvage rewrites every surviving version: it needs free disk space for
// them and takes about (data size / disk bandwidth). Delete the quarantine
// directory once it is no longer needed (docs/operations.md).
#ifndef KRUL_SERVICES_KVSTORE_STORAGE_ROCKSDB_RECOVERY_H_
#define KRUL_SERVICES_KVSTORE_STORAGE_ROCKSDB_RECOVERY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kvstore/storage/rocksdb_tier.h"

namespace krul::kvstore {

class KvStoreMetrics;

struct RecoveryReport {
  bool recovered = false;       // A quarantine and salvage happened.
  std::string quarantine_path;  // Where the damaged database now lies.
  std::string cause;            // The corruption that triggered it.
  uint64_t recovered_versions = 0;
  uint64_t lost_versions = 0;  // Listed manifests that could not be copied.
  uint64_t damaged_files = 0;  // .sst files that could not be read whole.
};

// Opens the tier at options.path, recovering as above when it is corrupt
// (and `recover` is true; otherwise corruption is DATA_LOSS as before).
// `report` (may be null) says what happened; `metrics` (may be null) counts
// a recovery. UNAVAILABLE / INTERNAL for failures other than corruption, or
// when the quarantine cannot be made (e.g. permissions).
absl::StatusOr<std::unique_ptr<RocksDbTier>> OpenRocksDbTier(const RocksDbTierOptions& options,
                                                             bool recover, KvStoreMetrics* metrics,
                                                             RecoveryReport* report);

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_STORAGE_ROCKSDB_RECOVERY_H_
