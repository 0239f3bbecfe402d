// krul-kvstore: the KV store server. Flags -> ServerOptions -> Validate ->
// run until SIGTERM/SIGINT, then shut down gracefully. See README.md.
// Durations are absl::Duration flags ("30s", "24h"), sizes byte counts
// ("4K", "1G"); diagnostics go to stderr through krul/base/log.h.
//
// `krul-kvstore hash-token TENANT < token-file` prints the line for
// --tenant_tokens_file ("TENANT:<sha256 hex>") and exits.
#include <malloc.h>
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/time/time.h"
#include "krul/base/byte_size.h"
#include "krul/base/flags_usage.h"
#include "krul/base/log.h"
#include "krul/base/status_macros.h"
#include "krul/rpc/bearer_token.h"
#include "krul/rpc/credentials.h"
#include "krul/transport/ucx_transport.h"
#include "kvstore/memory_trimmer.h"
#include "kvstore/options.h"
#include "kvstore/server.h"

ABSL_FLAG(std::string, host, "127.0.0.1",
          "Address the gRPC control plane listens on (and /metrics unless --metrics_host); "
          "loopback by default, give e.g. 0.0.0.0 to serve other hosts");
ABSL_FLAG(int, port, 7070, "gRPC port; 0 picks a free one (printed on start)");
ABSL_FLAG(std::string, metrics_host, "", "Address of /metrics (plaintext HTTP); empty = --host");
ABSL_FLAG(int, metrics_port, 9464, "Prometheus /metrics port; 0 picks a free one, -1 disables");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain of the gRPC listener (with --tls_key_file: TLS)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of the gRPC listener");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA bundle: clients must present a certificate it signed (mutual TLS)");
ABSL_FLAG(absl::Duration, tls_refresh_interval, absl::Seconds(60),
          "How often the TLS files are re-read (rotation without restart)");
ABSL_FLAG(std::string, tenant_tokens_file, "",
          "Bearer tokens of the tenants, one 'tenant:sha256hex' per line (see hash-token); "
          "empty = no authentication, single-tenant trusting mode (loopback only)");
ABSL_FLAG(bool, insecure, false,
          "Allow plaintext gRPC and the unauthenticated trusting mode on a non-loopback "
          "--host (never in production)");
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
ABSL_FLAG(krul::ByteSize, rocksdb_write_buffer, krul::ByteSize(32 << 20),
          "RocksDB memtable size (memory: up to two of them on top of the DRAM tier)");
ABSL_FLAG(absl::Duration, malloc_trim_interval, absl::Seconds(1),
          "Give freed heap pages back to the OS this often (glibc malloc_trim; 0 = never): "
          "without it, evicted small blocks leave RSS far above the DRAM cap");
ABSL_FLAG(bool, rocksdb_recover, true,
          "On a corrupt RocksDB at start-up, quarantine it and salvage the intact versions "
          "(false: refuse to start)");
ABSL_FLAG(krul::ByteSize, max_staging, krul::ByteSize(uint64_t{1} << 30),
          "Memory reserved for open puts, at most");
ABSL_FLAG(krul::ByteSize, max_block_size, krul::ByteSize(256 << 20),
          "Largest encoded block accepted");
ABSL_FLAG(absl::Duration, put_timeout, absl::Seconds(60), "Uncommitted puts are aborted after");
ABSL_FLAG(absl::Duration, default_ttl, absl::Hours(24),
          "Idle versions are deleted after this (0 = never)");
ABSL_FLAG(uint32_t, keep_versions, 2,
          "Versions kept per conversation: older turns are deleted when a newer one commits "
          "(0 = keep all)");
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
ABSL_FLAG(std::string, ucx_net_devices, "",
          "UCX network devices (UCX_NET_DEVICES unless set); empty = lo when --host is "
          "loopback, else every device UCX finds");
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
  o.metrics_host = absl::GetFlag(FLAGS_metrics_host);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  o.tls.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  o.tls.key_file = absl::GetFlag(FLAGS_tls_key_file);
  o.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  o.tls.refresh_interval = absl::GetFlag(FLAGS_tls_refresh_interval);
  o.tenant_tokens_file = absl::GetFlag(FLAGS_tenant_tokens_file);
  o.allow_insecure = absl::GetFlag(FLAGS_insecure);
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
  s.rocksdb_recover = absl::GetFlag(FLAGS_rocksdb_recover);
  s.put_timeout = absl::GetFlag(FLAGS_put_timeout);
  s.default_ttl = absl::GetFlag(FLAGS_default_ttl);
  s.keep_versions = absl::GetFlag(FLAGS_keep_versions);
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
  const MemoryTrimmer trimmer(absl::GetFlag(FLAGS_malloc_trim_interval));

  std::unique_ptr<Transport> transport;
  if (absl::GetFlag(FLAGS_ucx)) {
    UcxTransportOptions uo;
    uo.force_tcp = absl::GetFlag(FLAGS_ucx_force_tcp);
    uo.tcp_device = absl::GetFlag(FLAGS_ucx_tcp_device);
    // UCX opens its TCP interfaces on every device it finds unless told;
    // a loopback store keeps its data plane on loopback too.
    std::string devices = absl::GetFlag(FLAGS_ucx_net_devices);
    if (devices.empty() && rpc::IsLoopbackHost(options->host)) devices = "lo";
    if (!devices.empty()) uo.ucx_settings.emplace_back("NET_DEVICES", devices);
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

// `hash-token TENANT`: reads a token on stdin, prints its tokens-file line.
int HashToken(int argc, char** argv) {
  if (argc != 3 || std::string_view(argv[2]).empty()) {
    std::fprintf(stderr, "usage: krul-kvstore hash-token TENANT < token-file\n");
    return 2;
  }
  std::string token(std::istreambuf_iterator<char>(std::cin), {});
  token = std::string(absl::StripAsciiWhitespace(token));
  if (absl::Status s = krul::rpc::ValidateToken(token); !s.ok()) {
    std::fprintf(stderr, "krul-kvstore hash-token: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  std::printf("%s:%s\n", argv[2], krul::rpc::Sha256Hex(token).c_str());
  return 0;
}

int main(int argc, char** argv) {
  if (argc >= 2 && std::string_view(argv[1]) == "hash-token") return HashToken(argc, argv);
  // glibc serves an allocation from mmap when it is above a threshold that
  // it raises, up to 32 MiB, each time such a chunk is freed; RocksDB's
  // memtable arena blocks and gRPC's message buffers (MiBs each) then come
  // from the heap, which keeps what is freed. A fixed threshold keeps them
  // mapped, so their memory goes back to the OS when freed and the store's
  // RSS follows its DRAM tier (docs/operations.md, "Memory").
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  krul::InitFlagsUsage(
      "KV store for Krul conversation caches.\n"
      "  krul-kvstore --rocksdb_path=/var/lib/krul/kv --dram_capacity=8G  (loopback)\n"
      "  krul-kvstore --host=0.0.0.0 --tls_cert_file=C --tls_key_file=K "
      "--tls_client_ca_file=CA --tenant_tokens_file=T --rocksdb_path=DIR\n"
      "  krul-kvstore hash-token TENANT < token-file   (prints a --tenant_tokens_file line)\n"
      "--help lists these flags, --helpfull every flag.",
      "kvstore/main.cc");
  absl::ParseCommandLine(argc, argv);
  krul::SetMinLogSeverity(absl::GetFlag(FLAGS_log_level));
  return krul::kvstore::Run();
}
