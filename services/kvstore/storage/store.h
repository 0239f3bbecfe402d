// Store: the KV store's storage engine, independent of gRPC and UCX.
//
// Objects are conversation versions (tenant, conversation id, turn): a
// manifest plus its blocks (krul/manifest.h, krul/kv_block.h). Writes are
// two-phase:
//
//   BeginPut(key, block sizes)  -> reservation: staging memory + quota
//   WriteChunk(...) or a zero-copy data plane into StagingBlock(...)
//   CommitPut(put id, manifest) -> verifies every block against the
//                                  manifest, stores blocks, then publishes
//                                  the manifest: the only visibility point
//   AbortPut(put id)            -> releases everything; nothing was visible
//
// Readers (Lookup, GetBlock) only ever see committed versions, whole.
//
// Tiers (StoreOptions::tiers): a DRAM LRU with watermarks (dram_tier.h) in
// front of RocksDB (rocksdb_tier.h). Write-through commits reach RocksDB
// before CommitPut returns; write-back commits are flushed by a background
// thread, before eviction, and by Flush(). On Open the index of committed
// versions is rebuilt from RocksDB, so a restarted store serves everything
// committed (and flushed) before.
//
// Status codes (every method): INVALID_ARGUMENT malformed input (message
// names the field); NOT_FOUND no such version, reservation or lease;
// PERMISSION_DENIED unknown tenant (allow_unknown_tenants=false);
// RESOURCE_EXHAUSTED tenant quota, staging memory, or a version too large
// for a DRAM-only store; FAILED_PRECONDITION the request conflicts with the
// state (commit with unwritten blocks, delete/replace of a pinned version);
// DATA_LOSS a block or manifest failed its checksum (on commit: corrupted in
// transit, the put is aborted; on read: corrupted at rest); UNAVAILABLE the
// store is draining or RocksDB reported an I/O error.
//
// Thread-safe. Time comes from the injected Clock (leases, TTL, deadlines);
// expiry takes effect when RunMaintenance() runs (the server calls it every
// ServerOptions::maintenance_interval).
#ifndef KRUL_SERVICES_KVSTORE_STORAGE_STORE_H_
#define KRUL_SERVICES_KVSTORE_STORAGE_STORE_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "krul/base/clock.h"
#include "krul/v1/kvstore.pb.h"
#include "kvstore/options.h"
#include "kvstore/storage/byte_buffer.h"
#include "kvstore/storage/dram_tier.h"
#include "kvstore/storage/lease.h"
#include "kvstore/storage/quota.h"
#include "kvstore/storage/rocksdb_recovery.h"
#include "kvstore/storage/rocksdb_tier.h"
#include "kvstore/storage/version_key.h"

namespace krul::kvstore {

class KvStoreMetrics;

struct PutReservation {
  uint64_t put_id = 0;
  std::vector<uint64_t> block_sizes;
  absl::Time deadline;  // Aborted by RunMaintenance after this.
};

// A writable view of one staging block for a zero-copy data plane. The
// memory stays valid while `keepalive` is held (even after commit or abort).
struct StagingBlock {
  char* data = nullptr;
  uint64_t size = 0;
  // Where the block lies in transport-registered memory (null: heap).
  const MemoryRegion* region = nullptr;
  uint64_t region_offset = 0;
  std::shared_ptr<void> keepalive;
};

struct Lease {
  uint64_t lease_id = 0;
  absl::Time expires;
};

struct StoreStats {
  uint64_t dram_bytes = 0;
  uint64_t dram_objects = 0;
  uint64_t dram_capacity_bytes = 0;
  uint64_t rocksdb_bytes = 0;
  uint64_t rocksdb_objects = 0;
  uint64_t staging_bytes = 0;
  uint64_t open_puts = 0;
  uint64_t active_leases = 0;
  uint64_t evictions = 0;
  uint64_t checksum_failures = 0;
  uint64_t ttl_expirations = 0;
  uint64_t gc_deletions = 0;    // Versions deleted by keep_versions.
  uint64_t dirty_versions = 0;  // Write-back: committed, not yet on disk.
};

class Store {
 public:
  // Validates `options`, opens RocksDB (unless DRAM-only) and rebuilds the
  // index from it. A corrupt RocksDB is quarantined and what is intact
  // salvaged (options.rocksdb_recover, see rocksdb_recovery.h; recovery()
  // says what happened). `clock` and `metrics` are not owned and must
  // outlive the store; metrics may be null. INVALID_ARGUMENT bad options;
  // UNAVAILABLE from opening RocksDB; DATA_LOSS when it is corrupt and
  // rocksdb_recover is off.
  // `allocator` (not owned, may be null: heap) provides block memory, e.g.
  // a TransportArena so the UCX data plane can serve blocks zero-copy.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const StoreOptions& options,
                                                     Clock* clock = Clock::Real(),
                                                     KvStoreMetrics* metrics = nullptr,
                                                     BufferAllocator* allocator = nullptr);

  // Stops the flusher, writes back dirty versions (best effort) and closes
  // RocksDB. Open reservations are dropped.
  ~Store();

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // ---- writes ------------------------------------------------------------

  // Reserves staging memory and quota for a version with the given encoded
  // block sizes. `ttl`: idle TTL, ZeroDuration for the default.
  absl::StatusOr<PutReservation> BeginPut(const v1::ConversationKey& key,
                                          std::span<const uint64_t> block_sizes,
                                          absl::Duration ttl = absl::ZeroDuration());

  // Copies `data` into block `index` of reservation `put_id` at `offset`.
  // Chunks of a block must arrive in order without gaps (offset equals the
  // bytes written so far). NOT_FOUND unknown put; INVALID_ARGUMENT index or
  // range outside the block, or out-of-order offset.
  absl::Status WriteChunk(uint64_t put_id, uint32_t index, uint64_t offset, absl::string_view data);

  // The staging memory of block `index` for a zero-copy data plane (UCX).
  // After this the store no longer tracks how much of the reservation was
  // written; CommitPut relies on the block checksums alone.
  absl::StatusOr<StagingBlock> GetStagingBlock(uint64_t put_id, uint32_t index);

  // Verifies every block against `manifest` (whose key must be the
  // reservation's), stores the version and makes it visible. Replaces a
  // committed version with the same key. The reservation is closed whatever
  // the outcome. Returns the manifest as stored.
  absl::StatusOr<v1::Manifest> CommitPut(uint64_t put_id, v1::Manifest manifest);

  // Releases reservation `put_id`. NOT_FOUND when it is not open.
  absl::Status AbortPut(uint64_t put_id);

  // NOT_FOUND unless reservation `put_id` is open and its key belongs to
  // `tenant` (the same answer as for a put that does not exist, so a tenant
  // cannot probe another's put ids). The service calls it before acting on
  // a put id for an authenticated caller.
  absl::Status CheckPutTenant(uint64_t put_id, absl::string_view tenant) const;

  // BeginPut + WriteChunk + CommitPut for a version whose blocks are at hand.
  absl::StatusOr<v1::Manifest> Put(v1::Manifest manifest, std::span<const absl::string_view> blocks,
                                   absl::Duration ttl = absl::ZeroDuration());

  // ---- reads -------------------------------------------------------------

  // The committed manifest of `key`, or with `latest` of the highest
  // committed turn of key's conversation (key.turn ignored). Counts as an
  // access for the TTL.
  absl::StatusOr<std::shared_ptr<const v1::Manifest>> Lookup(const v1::ConversationKey& key,
                                                             bool latest = false);

  // Block `index` of committed version `key`, verified against the manifest
  // when it comes from disk. INVALID_ARGUMENT index out of range.
  absl::StatusOr<BufferPtr> GetBlock(const VersionKey& key, uint32_t index);

  // ---- lifecycle of versions ---------------------------------------------

  // Deletes `key`, or with `all_turns` every turn of its conversation.
  // Returns how many versions were deleted. NOT_FOUND when none exist;
  // FAILED_PRECONDITION when one is pinned (nothing after it is deleted).
  absl::StatusOr<int> Delete(const v1::ConversationKey& key, bool all_turns = false);

  // Pins committed version `key` for `duration` (ZeroDuration: the default
  // lease; INVALID_ARGUMENT above max_lease): it stays in DRAM (loaded from
  // disk if needed and if it fits), is not evicted, expired or deleted.
  absl::StatusOr<Lease> Pin(const v1::ConversationKey& key,
                            absl::Duration duration = absl::ZeroDuration());

  // Ends a lease. NOT_FOUND when it is not active.
  absl::Status Unpin(uint64_t lease_id);

  // NOT_FOUND unless lease `lease_id` is active on a version of `tenant`.
  absl::Status CheckLeaseTenant(uint64_t lease_id, absl::string_view tenant) const;

  // ---- operations --------------------------------------------------------

  // Expires leases, reservations past their deadline and versions idle past
  // their TTL; evicts if DRAM is above the high watermark.
  void RunMaintenance();

  // Refuses new puts (UNAVAILABLE) from now on; commits of open
  // reservations still succeed.
  void BeginDrain();
  bool draining() const;

  // Waits until no reservation is open or `timeout` passes; returns the
  // number still open.
  size_t WaitForOpenPuts(absl::Duration timeout);

  // Writes every dirty (write-back) version to RocksDB and flushes RocksDB's
  // memtables.
  absl::Status Flush();

  StoreStats Stats() const;

  const StoreOptions& options() const { return options_; }

  // What happened to a corrupt RocksDB at open (recovered == false: nothing).
  const RecoveryReport& recovery() const { return recovery_; }

  // The RocksDB tier (null when DRAM-only), for tests that inject faults.
  RocksDbTier* rocksdb_for_testing() { return rocks_.get(); }

 private:
  struct Reservation;
  struct Entry {
    std::shared_ptr<const v1::Manifest> manifest;  // Null when corrupt.
    absl::Status corrupt;                          // DATA_LOSS from reload.
    uint64_t bytes = 0;
    uint64_t generation = 0;  // Changes when the version is replaced.
    bool on_disk = false;
    bool dirty = false;          // Write-back: not yet on disk.
    bool stale_on_disk = false;  // Dirty, and a replaced version's blocks are on disk.
    absl::Time last_access;
    absl::Duration ttl;  // ZeroDuration: never expires.
  };

  Store(const StoreOptions& options, Clock* clock, KvStoreMetrics* metrics,
        std::unique_ptr<RocksDbTier> rocks, uint64_t id_seed);

  absl::Status ReloadIndex();
  std::unique_ptr<ByteBuffer> AllocateBuffer(size_t size);
  absl::Status CheckTenant(const std::string& tenant) const;
  absl::Mutex& KeyMutex(const VersionKey& key);
  std::map<VersionKey, Entry>::iterator FindLocked(const VersionKey& key, bool latest)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::Manifest> Publish(const VersionKey& key, v1::Manifest manifest,
                                       std::vector<BufferPtr> blocks, uint64_t reserved,
                                       absl::Duration ttl);
  // Publish's part under the version's key lock.
  absl::StatusOr<v1::Manifest> PublishUnderKeyLock(const VersionKey& key, v1::Manifest manifest,
                                                   std::vector<BufferPtr> blocks, uint64_t reserved,
                                                   absl::Duration ttl, uint64_t bytes,
                                                   absl::Time now);
  void RemoveEntryLocked(std::map<VersionKey, Entry>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropReservationLocked(const Reservation& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The open reservation of `put_id` (its lock not taken); NOT_FOUND when
  // there is none.
  absl::StatusOr<std::shared_ptr<Reservation>> OpenReservation(uint64_t put_id)
      ABSL_LOCKS_EXCLUDED(mu_);
  // NOT_FOUND when `r` was closed meanwhile; INVALID_ARGUMENT for a block
  // index it does not have. Call with r.mu held.
  static absl::Status CheckOpenBlockLocked(const Reservation& r, uint32_t index);
  // Deletes `key` from both tiers. Pinned: FAILED_PRECONDITION, or with
  // `only_if_expired` / `skip_pinned` OK without deleting; with
  // `only_if_expired` also only once its TTL has run out.
  absl::Status DeleteOne(const VersionKey& key, bool only_if_expired, bool* deleted,
                         bool skip_pinned = false);
  // Version GC: deletes the versions of key's conversation beyond the newest
  // options_.keep_versions turns (pinned ones are skipped).
  void CollectOldVersions(const VersionKey& key);
  absl::Status FlushVersion(const VersionKey& key);
  void EvictIfNeeded();
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CountChecksumFailure();
  void FlusherLoop();

  const StoreOptions options_;
  Clock* const clock_;
  KvStoreMetrics* const metrics_;
  const std::unique_ptr<RocksDbTier> rocks_;
  BufferAllocator* allocator_ = nullptr;  // Null: heap.
  RecoveryReport recovery_;

  // Serializes disk writes and deletes of one version against each other
  // (commit vs delete vs write-back flush of the same key). Taken before mu_.
  static constexpr size_t kKeyStripes = 64;
  std::array<absl::Mutex, kKeyStripes> key_mu_;

  mutable absl::Mutex mu_;
  std::map<VersionKey, Entry> index_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<DramTier> dram_ ABSL_GUARDED_BY(mu_);  // Null: RocksDB only.
  QuotaTable quota_ ABSL_GUARDED_BY(mu_);
  LeaseTable leases_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, std::shared_ptr<Reservation>> reservations_ ABSL_GUARDED_BY(mu_);
  uint64_t next_put_id_ ABSL_GUARDED_BY(mu_);
  uint64_t next_generation_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t staging_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t disk_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t disk_objects_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t dirty_versions_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<VersionKey> flush_queue_ ABSL_GUARDED_BY(mu_);
  bool stop_flusher_ ABSL_GUARDED_BY(mu_) = false;

  std::atomic<uint64_t> evictions_{0};
  std::atomic<uint64_t> checksum_failures_{0};
  std::atomic<uint64_t> ttl_expirations_{0};
  std::atomic<uint64_t> gc_deletions_{0};

  std::thread flusher_;  // Write-back only.
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_STORAGE_STORE_H_
