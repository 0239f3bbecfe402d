// krul-kvstore: the KV store server. Flags -> ServerOptions -> Validate ->
// run until SIGTERM/SIGINT, then shut down gracefully. See README.md.
// Durations are absl::Duration flags ("30s", "24h"), sizes byte counts
// ("4K", "1G"); diagnostics go to stderr through krul/base/log.h.
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/time/time.h"
#include "krul/base/byte_size.h"
#include "krul/base/log.h"
#include "krul/base/status_macros.h"
#include "krul/transport/ucx_transport.h"
#include "kvstore/options.h"
#include "kvstore/server.h"

ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on (gRPC and /metrics)");
ABSL_FLAG(int, port, 7070, "gRPC port; 0 picks a free one (printed on start)");
ABSL_FLAG(int, metrics_port, 9464, "Prometheus /metrics port; 0 picks a free one, -1 disables");
ABSL_FLAG(std::string, tiers, "dram+rocksdb", "Tiers: dram, dram+rocksdb or rocksdb");
ABSL_FLAG(std::string, write_mode, "write-through",
          "write-through (commit waits for RocksDB) or write-back (flushed in the background)");
ABSL_FLAG(krul::ByteSize, dram_capacity, krul::ByteSize(uint64_t{1} << 30),
          "DRAM tier capacity (K/M/G/T suffixes)");
ABSL_FLAG(double, high_watermark, 0.9, "Evict when DRAM use exceeds this fraction of capacity");
ABSL_FLAG(double, low_watermark, 0.7, "...down to this fraction");
ABSL_FLAG(std::string, rocksdb_path, "", "RocksDB directory (required unless --tiers=dram)");
ABSL_FLAG(bool, rocksdb_sync, false, "fsync the RocksDB WAL on every commit");
ABSL_FLAG(krul::ByteSize, rocksdb_min_blob_size, krul::ByteSize(4 << 10),
          "Values at least this big go to blob files");
ABSL_FLAG(krul::ByteSize, rocksdb_write_buffer, krul::ByteSize(128 << 20), "RocksDB memtable size");
ABSL_FLAG(krul::ByteSize, max_staging, krul::ByteSize(uint64_t{1} << 30),
          "Memory reserved for open puts, at most");
ABSL_FLAG(krul::ByteSize, max_block_size, krul::ByteSize(256 << 20),
          "Largest encoded block accepted");
ABSL_FLAG(absl::Duration, put_timeout, absl::Seconds(60), "Uncommitted puts are aborted after");
ABSL_FLAG(absl::Duration, default_ttl, absl::Hours(24),
          "Idle versions are deleted after this (0 = never)");
ABSL_FLAG(absl::Duration, max_ttl, absl::Hours(24 * 30), "Largest TTL a put may ask for");
ABSL_FLAG(absl::Duration, default_lease, absl::Seconds(30), "Pin lease when none is asked for");
ABSL_FLAG(absl::Duration, max_lease, absl::Minutes(10), "Longest pin lease");
ABSL_FLAG(krul::ByteSize, default_tenant_quota, krul::ByteSize(0),
          "Bytes per tenant (0 = unlimited)");
ABSL_FLAG(std::string, tenant_quotas, "", "Per-tenant quotas: tenant=bytes,tenant=bytes");
ABSL_FLAG(bool, allow_unknown_tenants, true,
          "Accept tenants not named in --tenant_quotas (false: PERMISSION_DENIED)");
ABSL_FLAG(krul::ByteSize, max_inline, krul::ByteSize(4 << 20), "Largest inline Get/Put");
ABSL_FLAG(krul::ByteSize, chunk_size, krul::ByteSize(4 << 20), "Data-plane chunk size over gRPC");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "On SIGTERM, how long open puts may still commit");
ABSL_FLAG(absl::Duration, maintenance_interval, absl::Seconds(1),
          "Lease / TTL / reservation expiry cadence");
ABSL_FLAG(bool, ucx, false, "Offer the UCX data plane (shared memory / TCP / RDMA)");
ABSL_FLAG(bool, ucx_force_tcp, false, "Restrict UCX to TCP (UCX_TLS=tcp unless set)");
ABSL_FLAG(std::string, ucx_tcp_device, "lo", "Network device for --ucx_force_tcp");
ABSL_FLAG(std::string, ucx_grant_scope, "block",
          "UCX grants cover exactly the requested blocks (block) or whole memory chunks that "
          "clients cache (chunk: faster same-host reads, for trusted clients only)");
ABSL_FLAG(krul::LogSeverity, log_level, krul::LogSeverity::kInfo,
          "Least severity logged on stderr: info, warning or error");

namespace krul::kvstore {
namespace {

// Fills ServerOptions from the flags; errors name the flag.
absl::StatusOr<ServerOptions> OptionsFromFlags() {
  ServerOptions o;
  o.host = absl::GetFlag(FLAGS_host);
  o.port = absl::GetFlag(FLAGS_port);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  StoreOptions& s = o.store;
  auto tiers = ParseTierMode(absl::GetFlag(FLAGS_tiers));
  if (!tiers.ok()) return tiers.status();
  s.tiers = *tiers;
  auto write_mode = ParseWriteMode(absl::GetFlag(FLAGS_write_mode));
  if (!write_mode.ok()) return write_mode.status();
  s.write_mode = *write_mode;
  s.dram_capacity_bytes = absl::GetFlag(FLAGS_dram_capacity).bytes;
  s.rocksdb_min_blob_bytes = absl::GetFlag(FLAGS_rocksdb_min_blob_size).bytes;
  s.rocksdb_write_buffer_bytes = absl::GetFlag(FLAGS_rocksdb_write_buffer).bytes;
  s.max_staging_bytes = absl::GetFlag(FLAGS_max_staging).bytes;
  s.max_block_bytes = absl::GetFlag(FLAGS_max_block_size).bytes;
  s.default_tenant_quota_bytes = absl::GetFlag(FLAGS_default_tenant_quota).bytes;
  o.max_inline_bytes = absl::GetFlag(FLAGS_max_inline).bytes;
  o.chunk_bytes = absl::GetFlag(FLAGS_chunk_size).bytes;
  s.high_watermark = absl::GetFlag(FLAGS_high_watermark);
  s.low_watermark = absl::GetFlag(FLAGS_low_watermark);
  s.rocksdb_path = absl::GetFlag(FLAGS_rocksdb_path);
  s.rocksdb_sync = absl::GetFlag(FLAGS_rocksdb_sync);
  s.put_timeout = absl::GetFlag(FLAGS_put_timeout);
  s.default_ttl = absl::GetFlag(FLAGS_default_ttl);
  s.max_ttl = absl::GetFlag(FLAGS_max_ttl);
  s.default_lease = absl::GetFlag(FLAGS_default_lease);
  s.max_lease = absl::GetFlag(FLAGS_max_lease);
  auto quotas = ParseTenantQuotas(absl::GetFlag(FLAGS_tenant_quotas));
  if (!quotas.ok()) return quotas.status();
  s.tenant_quota_bytes = *std::move(quotas);
  s.allow_unknown_tenants = absl::GetFlag(FLAGS_allow_unknown_tenants);
  auto scope = ParseGrantScope(absl::GetFlag(FLAGS_ucx_grant_scope));
  if (!scope.ok()) return scope.status();
  o.ucx_grant_scope = *scope;
  o.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  o.maintenance_interval = absl::GetFlag(FLAGS_maintenance_interval);
  KRUL_RETURN_IF_ERROR(o.Validate());
  return o;
}

int Run() {
  absl::StatusOr<ServerOptions> options = OptionsFromFlags();
  if (!options.ok()) {
    KRUL_LOG(ERROR) << "krul-kvstore: " << options.status().message();
    return 2;
  }
  // Block the shutdown signals in every thread (threads inherit the mask)
  // and wait for them in this one.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::unique_ptr<Transport> transport;
  if (absl::GetFlag(FLAGS_ucx)) {
    UcxTransportOptions uo;
    uo.force_tcp = absl::GetFlag(FLAGS_ucx_force_tcp);
    uo.tcp_device = absl::GetFlag(FLAGS_ucx_tcp_device);
    absl::StatusOr<std::unique_ptr<Transport>> t = NewUcxTransport(uo);
    if (!t.ok()) {
      KRUL_LOG(ERROR) << "krul-kvstore: UCX: " << t.status().message();
      return 1;
    }
    transport = *std::move(t);
  }
  absl::StatusOr<std::unique_ptr<KvStoreServer>> server =
      KvStoreServer::Start(*options, std::move(transport));
  if (!server.ok()) {
    KRUL_LOG(ERROR) << "krul-kvstore: " << server.status();
    return 1;
  }
  // Tests and scripts parse this line to find the ports.
  std::printf("krul-kvstore listening on %s:%d metrics_port %d tiers %s write_mode %s\n",
              options->host.c_str(), (*server)->port(), (*server)->metrics_port(),
              TierModeName(options->store.tiers), WriteModeName(options->store.write_mode));
  std::fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  KRUL_LOG(INFO) << "krul-kvstore: signal " << sig << ", shutting down";
  absl::Status s = (*server)->Shutdown();
  if (!s.ok()) {
    KRUL_LOG(ERROR) << "krul-kvstore: shutdown: " << s;
    return 1;
  }
  KRUL_LOG(INFO) << "krul-kvstore: stopped cleanly";
  return 0;
}

}  // namespace
}  // namespace krul::kvstore

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "KV store for Krul conversation caches.\n"
      "  krul-kvstore --port=7070 --metrics_port=9464 --rocksdb_path=/var/lib/krul/kv "
      "--dram_capacity=8G");
  absl::ParseCommandLine(argc, argv);
  krul::SetMinLogSeverity(absl::GetFlag(FLAGS_log_level));
  return krul::kvstore::Run();
}
