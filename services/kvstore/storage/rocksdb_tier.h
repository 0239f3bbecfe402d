// RocksDbTier: the durable tier. One RocksDB database on local disk holds
// every persisted version as its blocks plus a framed manifest
// (docs/formats/manifest.md). Block values go to blob files (they are large
// and incompressible; blob files keep compaction from rewriting them).
//
// Keys (docs/formats/manifest.md):
//   'm' tenant_len:u8 tenant conv_len:u16be conv turn:u32be            -> stored manifest
//   'b' tenant_len:u8 tenant conv_len:u16be conv turn:u32be index:u32be -> encoded block
//
// A version is written in one WriteBatch (blocks, then the manifest), so it
// appears atomically; a crash never leaves blocks without a manifest.
//
// Status codes: NOT_FOUND (no such key), DATA_LOSS (RocksDB reports
// corruption, or a stored manifest fails its checksum), UNAVAILABLE (I/O
// error: the disk is failing or full), INTERNAL (anything else RocksDB says).
//
// Thread-safe (RocksDB is).
#ifndef KRUL_SERVICES_KVSTORE_STORAGE_ROCKSDB_TIER_H_
#define KRUL_SERVICES_KVSTORE_STORAGE_ROCKSDB_TIER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/v1/kvstore.pb.h"
#include "kvstore/storage/byte_buffer.h"
#include "kvstore/storage/version_key.h"

namespace rocksdb {
class DB;
}

namespace krul::kvstore {

struct RocksDbTierOptions {
  std::string path;
  bool sync = false;
  uint64_t min_blob_bytes = 4096;
  uint64_t write_buffer_bytes = uint64_t{128} << 20;
};

class RocksDbTier {
 public:
  // Opens (creating if missing) the database at options.path.
  // UNAVAILABLE when the path cannot be used (permissions, locked by another
  // process), DATA_LOSS when RocksDB finds the database corrupt.
  static absl::StatusOr<std::unique_ptr<RocksDbTier>> Open(const RocksDbTierOptions& options);

  // Flushes memtables and closes the database.
  ~RocksDbTier();

  // Writes all blocks of `key` and then its stored manifest, atomically.
  // With `replace`, first removes every block stored for `key` (a version
  // with the same key may have been stored before).
  absl::Status WriteVersion(const VersionKey& key, const v1::Manifest& manifest,
                            const std::vector<BufferPtr>& blocks, bool replace);

  // The manifest of `key`: NOT_FOUND, DATA_LOSS (frame checksum).
  absl::StatusOr<v1::Manifest> ReadManifest(const VersionKey& key);

  // The encoded bytes of block `index` of `key`, unverified (the caller
  // checks them against the manifest). NOT_FOUND, DATA_LOSS, UNAVAILABLE.
  // The buffer comes from `allocator` when given (and not full).
  absl::StatusOr<BufferPtr> ReadBlock(const VersionKey& key, uint32_t index,
                                      BufferAllocator* allocator = nullptr);

  // Removes the manifest first (the version disappears at once), then the
  // blocks. OK when absent.
  absl::Status DeleteVersion(const VersionKey& key);

  // Calls `fn` for every stored manifest in key order; a manifest that fails
  // its checksum is passed as a DATA_LOSS status with its key. Used to
  // rebuild the store's index on start.
  absl::Status ForEachManifest(
      const std::function<void(const VersionKey&, absl::StatusOr<v1::Manifest>)>& fn);

  // Persists memtables (for a clean shutdown; the WAL already makes writes
  // survive a crash of the process).
  absl::Status Flush();

  // The underlying database, for tests that inject corruption.
  rocksdb::DB* db() { return db_.get(); }

  // Key encodings (exposed for tests, tools and recovery).
  static std::string ManifestKey(const VersionKey& key);
  static std::string BlockKey(const VersionKey& key, uint32_t index);
  // Inverse of ManifestKey; false when `key` is not a manifest key.
  static bool ParseManifestKey(std::string_view key, VersionKey* out);

 private:
  RocksDbTier(std::unique_ptr<rocksdb::DB> db, bool sync);

  std::unique_ptr<rocksdb::DB> db_;
  bool sync_;
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_STORAGE_ROCKSDB_TIER_H_
