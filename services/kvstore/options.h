// Typed configuration of the KV store: StoreOptions (the storage engine) and
// ServerOptions (gRPC, metrics, shutdown). main.cc fills them from flags and
// calls Validate() once; nothing else parses configuration.
#ifndef KRUL_SERVICES_KVSTORE_OPTIONS_H_
#define KRUL_SERVICES_KVSTORE_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "krul/base/byte_size.h"  // ParseByteSize, for sizes in options and flags
#include "krul/rpc/credentials.h"

namespace krul::kvstore {

// Which tiers hold committed versions.
enum class TierMode {
  kDramOnly,        // No disk: evicted versions are gone; nothing survives restart.
  kDramAndRocksDb,  // DRAM cache in front of RocksDB (the default).
  kRocksDbOnly,     // Every read goes to RocksDB (its block cache aside).
};

// When a commit reaches RocksDB (kDramAndRocksDb only).
enum class WriteMode {
  // Commit returns after RocksDB accepted the version: a crash of the store
  // process loses nothing committed.
  kWriteThrough,
  // Commit returns once the version is in DRAM; a background flusher (and
  // eviction, and shutdown) writes it to RocksDB. Faster; a crash loses the
  // versions not yet flushed.
  kWriteBack,
};

// How much of the store's memory a UCX grant covers.
enum class GrantScope {
  // Exactly the requested blocks, expiring with the request (default). Each
  // request makes the client map the memory anew.
  kBlock,
  // Whole arena chunks, never expiring: clients cache one import per chunk,
  // so same-host reads are a plain memcpy. A client can then read (and
  // write) any block in those chunks, whatever its tenant: only for trusted
  // workers. Blocks outside the arena still get block grants.
  kChunk,
};

// "dram", "dram+rocksdb", "rocksdb" / "write-through", "write-back" /
// "block", "chunk".
absl::StatusOr<TierMode> ParseTierMode(absl::string_view text);
absl::StatusOr<WriteMode> ParseWriteMode(absl::string_view text);
absl::StatusOr<GrantScope> ParseGrantScope(absl::string_view text);
const char* TierModeName(TierMode mode);
const char* WriteModeName(WriteMode mode);

struct StoreOptions {
  TierMode tiers = TierMode::kDramAndRocksDb;
  WriteMode write_mode = WriteMode::kWriteThrough;

  // DRAM tier. When usage rises above high_watermark * capacity, least
  // recently used unpinned versions leave DRAM until usage is at most
  // low_watermark * capacity. Default: 1 GiB, 0.9, 0.7.
  uint64_t dram_capacity_bytes = uint64_t{1} << 30;
  double high_watermark = 0.9;
  double low_watermark = 0.7;

  // RocksDB tier; rocksdb_path is required unless tiers == kDramOnly.
  std::string rocksdb_path;
  // fsync the WAL on every commit (survives power loss, not only a crash of
  // the process). Default: false.
  bool rocksdb_sync = false;
  // Values at least this large go to blob files instead of the LSM tree, so
  // compaction never rewrites KV payloads. Default: 4 KiB.
  uint64_t rocksdb_min_blob_bytes = 4096;
  // Memtable size. Up to two memtables (one being flushed) hold recent
  // writes, blocks included, on top of the DRAM tier, so this is most of
  // the store's memory overhead; a version larger than it is flushed on
  // its own. Default: 32 MiB (was 128 MiB: 17% instead of 8% over a 1 GiB
  // DRAM cap, docs/operations.md).
  uint64_t rocksdb_write_buffer_bytes = uint64_t{32} << 20;
  // A corrupt database is quarantined and its intact versions salvaged at
  // open (storage/rocksdb_recovery.h) instead of failing the start with
  // DATA_LOSS. Default: true.
  bool rocksdb_recover = true;

  // Open reservations (BeginPut .. Commit/Abort) hold staging memory; beyond
  // this BeginPut returns RESOURCE_EXHAUSTED. Default: 1 GiB.
  uint64_t max_staging_bytes = uint64_t{1} << 30;
  // Largest encoded block and most blocks per version. Default: 256 MiB and
  // 65536.
  uint64_t max_block_bytes = uint64_t{256} << 20;
  uint32_t max_blocks_per_version = 65536;
  // A reservation not committed within this is aborted. Default: 60 s.
  absl::Duration put_timeout = absl::Seconds(60);

  // Versions kept per conversation: when a version commits, the versions of
  // its conversation with lower turns beyond the newest `keep_versions` are
  // deleted from both tiers (pinned ones stay until unpinned, then go with
  // the next commit). 0 keeps every version (until its TTL). Default: 2 (the
  // one being restored and the one just written).
  uint32_t keep_versions = 2;

  // Idle TTL: a version not read or written for this long is deleted unless
  // pinned. Puts may ask for another TTL up to max_ttl. Zero = never.
  // Default: 24 h, max 30 days.
  absl::Duration default_ttl = absl::Hours(24);
  absl::Duration max_ttl = absl::Hours(24 * 30);

  // Pin leases. Default: 30 s, max 10 min.
  absl::Duration default_lease = absl::Seconds(30);
  absl::Duration max_lease = absl::Minutes(10);

  // Per-tenant quota on committed + reserved bytes; 0 = unlimited.
  // tenant_quota_bytes overrides the default for named tenants.
  uint64_t default_tenant_quota_bytes = 0;
  absl::flat_hash_map<std::string, uint64_t> tenant_quota_bytes;
  // When false, only tenants named in tenant_quota_bytes may store or read;
  // others get PERMISSION_DENIED. Default: true.
  bool allow_unknown_tenants = true;

  // INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;
};

// Parses "tenant=bytes,tenant=bytes" (bytes accept K/M/G/T suffixes, powers
// of 1024). INVALID_ARGUMENT on malformed input.
absl::StatusOr<absl::flat_hash_map<std::string, uint64_t>> ParseTenantQuotas(
    absl::string_view text);

struct ServerOptions {
  // gRPC listen host and port; port 0 picks a free port (reported by
  // KvStoreServer::port()). Default: 127.0.0.1:7070 (loopback: give an
  // address, e.g. 0.0.0.0, to serve other hosts).
  std::string host = "127.0.0.1";
  int port = 7070;
  // Prometheus /metrics (plaintext HTTP, read-only) on metrics_host (empty:
  // `host`); port 0 picks a free port, -1 disables. Default: "", 9464.
  std::string metrics_host;
  int metrics_port = 9464;

  // TLS of the gRPC listener (mutual TLS with tls.client_ca_file). Without
  // it the listener is plaintext, which is accepted only on a loopback host
  // or with allow_insecure (krul/rpc/credentials.h). Default: none.
  rpc::ServerTlsOptions tls;
  // Bearer tokens of the tenants (tenant_auth.h); empty: the single-tenant
  // trusting mode, accepted only on a loopback host or with allow_insecure.
  // Default: none.
  std::string tenant_tokens_file;
  // Accept plaintext and the trusting mode on a non-loopback host
  // (--insecure). Default: false.
  bool allow_insecure = false;
  // Largest inline Get/Put and largest data-plane chunk. Default: 4 MiB.
  uint64_t max_inline_bytes = uint64_t{4} << 20;
  uint64_t chunk_bytes = uint64_t{4} << 20;
  // UCX grant scope (see GrantScope). Default: block.
  GrantScope ucx_grant_scope = GrantScope::kBlock;
  // On SIGTERM: how long open puts may still commit. Default: 10 s.
  absl::Duration shutdown_grace = absl::Seconds(10);
  // Lease/TTL/reservation expiry and write-back flushing cadence.
  // Default: 1 s.
  absl::Duration maintenance_interval = absl::Seconds(1);

  StoreOptions store;

  // INVALID_ARGUMENT naming the first bad field (store fields as "store.*").
  absl::Status Validate() const;
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_OPTIONS_H_
