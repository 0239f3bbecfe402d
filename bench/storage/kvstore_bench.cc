// krul-bench-kvstore: Put and Get bandwidth of the KV store, end to end
// (client -> krul-kvstore process -> client, blocks verified on read), over
// the three data planes, next to baselines measured in the same run:
//
//   Get over UCX shared memory   vs  memcpy of the same bytes
//   Get over UCX TCP (loopback)  vs  a raw loopback TCP socket stream
//   Get over gRPC (inline)       vs  memcpy and the raw socket
//   Get over UCX shared memory   vs  ucx_perftest ucp_get over posix shm
//   Get over UCX TCP (loopback)  vs  ucx_perftest tag_bw over TCP on lo
//   durable Put (write-through)  vs  a raw RocksDB WriteBatch of the same blocks
//   p50 / p99 latency of a Get at 1, 8 and 32 concurrent clients
//
//   build/bin/krul-bench-kvstore [--json] [--sizes 64K,1M,64M] [--total 128M]
//       [--planes grpc,shm,tcp] [--rounds 3] [--clients 1,8,32]
//       [--ucx_perftest ucx_perftest | --ucx_perftest=]
//
// Each size stores one version of ceil(total / size) blocks of that size,
// reads it back --rounds times (best round reported, as for the baselines),
// then deletes it. The servers are two krul-kvstore processes started here
// on 127.0.0.1 (--ucx, and --ucx --ucx_force_tcp), write-through to RocksDB
// in a temp dir, DRAM large enough that every Get is served from DRAM.
// ucx_perftest (ucx-utils) runs as a server and a client process per size,
// plane and round, with as many messages of the block size as the version
// has blocks: UCX's own bound on the same transport (UCX_TLS=posix,self for
// shm: ucp_get, a memcpy from the mapped peer buffer, like the store's
// direct Get; UCX_TLS=tcp on lo with Krul's 256 KiB TCP segments for tcp:
// tag_bw, rendezvous like the store's messages protocol). It reuses one
// buffer per message, so small messages copy from cache while a Get streams
// distinct blocks from memory.
// JSON summary keys: shm_get_vs_memcpy, tcp_get_vs_socket, put_vs_rocksdb,
// shm_get_vs_ucx_perftest, tcp_get_vs_ucx_perftest: geometric means over
// block sizes >= 1 MiB of the per-size ratios.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "krul/base/byte_size.h"
#include "krul/kvclient/kvstore_client.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/manifest.h"
#include "krul/transport/ucx_transport.h"
#include "storage/kvstore_child.h"
#include "storage/loopback_tcp.h"
#include "storage/ucx_perftest.h"

ABSL_FLAG(bool, json, false, "Print the results as one JSON object");
ABSL_FLAG(std::string, sizes, "64K,256K,1M,4M,16M,64M", "Block sizes (K/M suffixes)");
ABSL_FLAG(krul::ByteSize, total, krul::ByteSize(128 << 20),
          "Bytes per version (blocks = total / size, at least 1)");
ABSL_FLAG(std::string, planes, "grpc,shm,tcp", "Data planes: grpc, shm (UCX), tcp (UCX)");
ABSL_FLAG(int, rounds, 3, "Rounds per measurement; the best is reported");
ABSL_FLAG(std::string, clients, "1,8,32", "Concurrent clients for the latency measurement");
ABSL_FLAG(krul::ByteSize, latency_size, krul::ByteSize(256 << 10),
          "Block size of the latency Get (one block)");
ABSL_FLAG(int, latency_ops, 64, "Gets per client in the latency measurement");
ABSL_FLAG(std::string, server_binary, KRUL_KVSTORE_BINARY, "The krul-kvstore executable");
ABSL_FLAG(std::string, workdir, "", "Directory for RocksDB files (default: a temp dir)");
ABSL_FLAG(std::string, grant_scope, "block",
          "The servers' --ucx_grant_scope: block (per-request grants) or chunk (cached "
          "whole-chunk grants, trusted clients)");
ABSL_FLAG(std::string, ucx_perftest, "ucx_perftest",
          "ucx_perftest binary for the UCX reference (path or name in PATH); empty: skip");
ABSL_FLAG(absl::Duration, perftest_timeout, absl::Seconds(60),
          "Time limit of one ucx_perftest run (server and client)");

namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "krul-bench-kvstore: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T OrDie(absl::StatusOr<T> v, const std::string& what) {
  if (!v.ok()) Die(absl::StrCat(what, ": ", v.status().ToString()));
  return *std::move(v);
}

// A block size: a byte count ("64K", krul/base/byte_size.h) of at least 1.
uint64_t PositiveSize(uint64_t n, const std::string& what) {
  if (n == 0) Die(what + ": must be at least 1 byte");
  return n;
}

// ---------------------------------------------------------------- servers

// A krul-kvstore child process on 127.0.0.1 with an ephemeral port.
std::unique_ptr<krul::bench::KvStoreChild> StartServer(const std::vector<std::string>& args) {
  auto server = krul::bench::KvStoreChild::Start(absl::GetFlag(FLAGS_server_binary), args);
  if (!server.ok()) Die("krul-kvstore did not start: " + server.status().ToString());
  return *std::move(server);
}

// ---------------------------------------------------------------- data

struct Version {
  krul::v1::Manifest manifest;
  std::vector<std::string> blocks;
  std::vector<std::string_view> views() const {
    return std::vector<std::string_view>(blocks.begin(), blocks.end());
  }
  uint64_t bytes() const {
    uint64_t n = 0;
    for (const auto& b : blocks) n += b.size();
    return n;
  }
};

// `count` kv-layout blocks of exactly `block_bytes` encoded bytes.
Version MakeVersion(const std::string& conv, uint64_t block_bytes, int count, uint32_t seed) {
  Version v;
  krul::v1::ConversationKey* key = v.manifest.mutable_key();
  key->set_tenant("bench");
  key->set_conversation_id(conv);
  key->set_turn(1);
  v.manifest.set_model_id("synthetic-7b");
  v.manifest.set_n_layers(32);
  std::mt19937_64 rng(seed);
  const uint64_t payload = block_bytes - krul::kBlockHeaderBytes;
  for (int i = 0; i < count; ++i) {
    std::string p(payload, '\0');
    for (size_t j = 0; j + 8 <= p.size(); j += 8) {
      uint64_t r = rng();
      std::memcpy(p.data() + j, &r, 8);
    }
    krul::BlockHeader h;
    h.dtype = krul::BlockDType::kU8;
    h.layout = krul::BlockLayout::kRaw;
    h.rank = 1;
    h.layer = static_cast<uint32_t>(i % 32);
    h.token_begin = static_cast<uint32_t>(256 * (i / 32));
    h.dims[0] = static_cast<uint32_t>(payload);
    v.blocks.push_back(OrDie(krul::EncodeBlock(h, p), "encode"));
  }
  return v;
}

// ---------------------------------------------------------------- baselines

double MemcpyGbps(uint64_t block, uint64_t total) {
  int n = static_cast<int>(std::max<uint64_t>(1, total / block));
  std::vector<char> src(block * n, 1), dst(block * n, 0);
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) std::memcpy(dst.data() + i * block, src.data() + i * block, block);
  double s = Since(t0);
  return static_cast<double>(block) * n / s / 1e9;
}

double RawTcpGbps(uint64_t block, uint64_t total) {
  auto pair = krul::bench::ConnectLoopbackTcp();
  if (!pair.ok()) {
    Die(pair.status().code() == absl::StatusCode::kUnavailable ? "connect"
                                                               : "raw tcp: bind/listen");
  }
  const int sender = pair->sender, receiver = pair->receiver;
  const int n = static_cast<int>(std::max<uint64_t>(1, total / block));
  std::thread tx([&] {
    std::vector<char> out(block, 2);
    for (int i = 0; i < n; ++i) {
      for (size_t done = 0; done < block;) {
        ssize_t w = send(sender, out.data() + done, block - done, MSG_NOSIGNAL);
        if (w <= 0) return;
        done += static_cast<size_t>(w);
      }
    }
  });
  std::vector<char> in(block);
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    for (size_t done = 0; done < block;) {
      ssize_t r = recv(receiver, in.data() + done, block - done, 0);
      if (r <= 0) Die("raw tcp: recv");
      done += static_cast<size_t>(r);
    }
  }
  double s = Since(t0);
  tx.join();
  close(sender);
  close(receiver);
  return static_cast<double>(block) * n / s / 1e9;
}

// The same blocks in one WriteBatch into a RocksDB configured like the
// store's tier (blob files, no compression, WAL on, no fsync).
double RocksDbGbps(const std::string& path, const Version& v) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.IncreaseParallelism(2);
  o.write_buffer_size = 128 << 20;
  o.compression = rocksdb::kNoCompression;
  o.enable_blob_files = true;
  o.min_blob_size = 4096;
  o.blob_file_size = 256 << 20;
  o.blob_compression_type = rocksdb::kNoCompression;
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::Open(o, path, &raw).ok()) Die("rocksdb open " + path);
  std::unique_ptr<rocksdb::DB> db(raw);
  auto t0 = Clock::now();
  rocksdb::WriteBatch batch;
  for (size_t i = 0; i < v.blocks.size(); ++i) {
    batch.Put(absl::StrCat("b", v.manifest.key().conversation_id(), "/", i), v.blocks[i]);
  }
  batch.Put(absl::StrCat("m", v.manifest.key().conversation_id()), v.manifest.SerializeAsString());
  if (!db->Write(rocksdb::WriteOptions(), &batch).ok()) Die("rocksdb write");
  double s = Since(t0);
  db->Close().PermitUncheckedError();
  db.reset();
  std::filesystem::remove_all(path);
  return static_cast<double>(v.bytes()) / s / 1e9;
}

// ---------------------------------------------------------------- planes

struct Plane {
  std::string name;                            // grpc, shm, tcp
  std::unique_ptr<krul::Transport> transport;  // null for grpc
  std::unique_ptr<krul::KvStoreClient> client;
  std::string address;
};

std::unique_ptr<krul::KvStoreClient> MakeClient(const std::string& address,
                                                krul::Transport* transport) {
  krul::KvStoreClientOptions o;
  o.addresses = {address};
  o.transfer_timeout = absl::Seconds(600);
  if (transport != nullptr) {
    o.block_transport = krul::NewUcxBlockTransport(transport);
    o.inline_put_bytes = 0;
  }
  return OrDie(krul::KvStoreClient::Create(std::move(o)), "client");
}

// Seconds to put `v` (and the server to commit it durably).
double TimePut(krul::KvStoreClient& client, const Version& v) {
  std::vector<std::string_view> views = v.views();
  auto t0 = Clock::now();
  OrDie(client.Put(v.manifest, views), "put");
  return Since(t0);
}

// Seconds to read every block of `v` (verified by the client).
double TimeGet(krul::KvStoreClient& client, const krul::v1::Manifest& m, uint64_t* bytes) {
  *bytes = 0;
  auto t0 = Clock::now();
  absl::Status s =
      client.Read(m, {}, [&](uint32_t, std::string_view enc, const krul::DecodedBlock&) {
        *bytes += enc.size();
        return absl::OkStatus();
      });
  double secs = Since(t0);
  if (!s.ok()) Die("get: " + s.ToString());
  return secs;
}

// UCX's own bandwidth on the plane's transport for `count` messages of
// `size` bytes, or 0 (with a note on stderr) when ucx_perftest cannot run.
double UcxPerftestGbps(const std::string& plane, uint64_t size, int count, std::string* test) {
  const std::string binary = absl::GetFlag(FLAGS_ucx_perftest);
  if (binary.empty()) return 0;
  krul::bench::UcxPerftestRun run;
  run.binary = binary;
  run.message_bytes = size;
  run.iterations = std::max(16, count);
  run.warmup_iterations = std::max<uint64_t>(2, run.iterations / 8);
  run.timeout = absl::GetFlag(FLAGS_perftest_timeout);
  if (plane == "shm") {
    run.test = "ucp_get";
    run.env = {{"UCX_TLS", "posix,self"}};
  } else {
    run.test = "tag_bw";
    run.env = {{"UCX_TLS", "tcp"},
               {"UCX_NET_DEVICES", "lo"},
               {"UCX_TCP_TX_SEG_SIZE", "256k"},
               {"UCX_TCP_RX_SEG_SIZE", "256k"}};
  }
  *test = run.test;
  absl::StatusOr<krul::bench::UcxPerftestResult> r = krul::bench::RunUcxPerftest(run);
  if (!r.ok()) {
    std::fprintf(stderr, "krul-bench-kvstore: ucx_perftest skipped: %s\n",
                 r.status().ToString().c_str());
    return 0;
  }
  return r->gbps;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(std::ceil(p * v.size())) - 1;
  return v[std::min(i, v.size() - 1)];
}

double GeoMean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += std::log(x);
  return std::exp(s / v.size());
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("KV store Put/Get bandwidth and latency vs baselines");
  absl::ParseCommandLine(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  const bool json_out = absl::GetFlag(FLAGS_json);
  std::vector<uint64_t> sizes;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_sizes), ',')) {
    sizes.push_back(PositiveSize(OrDie(krul::ParseByteSize(s), "--sizes"), "--sizes"));
  }
  std::vector<int> clients;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_clients), ',')) {
    int c = 0;
    if (!absl::SimpleAtoi(s, &c) || c < 1) Die("bad --clients");
    clients.push_back(c);
  }
  std::vector<std::string> plane_names = absl::StrSplit(absl::GetFlag(FLAGS_planes), ',');
  const uint64_t total = PositiveSize(absl::GetFlag(FLAGS_total).bytes, "--total");
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));

  std::string workdir = absl::GetFlag(FLAGS_workdir);
  if (workdir.empty()) {
    workdir =
        (std::filesystem::temp_directory_path() / absl::StrCat("krul-bench-kvstore-", getpid()))
            .string();
  }
  std::filesystem::create_directories(workdir);
  const std::string dram = absl::StrCat((total * 4 >> 20) + 512, "M");

  // Servers: one with UCX (shared memory; also serves gRPC), one with UCX
  // restricted to TCP.
  std::unique_ptr<krul::bench::KvStoreChild> shm_server, tcp_server;
  std::vector<Plane> planes;
  for (const std::string& name : plane_names) {
    Plane p;
    p.name = name;
    if (name == "grpc" || name == "shm") {
      if (!shm_server) {
        shm_server =
            StartServer({"--ucx", "--ucx_grant_scope=" + absl::GetFlag(FLAGS_grant_scope),
                         "--rocksdb_path=" + workdir + "/shm-db", "--dram_capacity=" + dram,
                         "--max_staging=" + dram, "--default_ttl=0"});
      }
      p.address = shm_server->address();
    } else if (name == "tcp") {
      tcp_server = StartServer({"--ucx", "--ucx_force_tcp",
                                "--ucx_grant_scope=" + absl::GetFlag(FLAGS_grant_scope),
                                "--rocksdb_path=" + workdir + "/tcp-db", "--dram_capacity=" + dram,
                                "--max_staging=" + dram, "--default_ttl=0"});
      p.address = tcp_server->address();
    } else {
      Die("unknown plane " + name);
    }
    if (name != "grpc") {
      krul::UcxTransportOptions uo;
      uo.force_tcp = name == "tcp";
      p.transport = OrDie(krul::NewUcxTransport(uo), "ucx transport");
    }
    p.client = MakeClient(p.address, p.transport.get());
    planes.push_back(std::move(p));
  }

  nlohmann::json results = nlohmann::json::array();
  std::map<std::string, std::vector<double>> big_ratios;  // >= 1 MiB sizes
  if (!json_out) {
    std::printf("%-6s %-5s %9s %9s %9s %9s %9s %9s %9s %9s %9s\n", "block", "plane", "put GB/s",
                "get GB/s", "memcpy", "socket", "perftest", "rocksdb", "get/base", "get/perf",
                "put/rdb");
  }
  uint32_t seed = 1;
  for (uint64_t size : sizes) {
    const int count = static_cast<int>(std::max<uint64_t>(1, total / size));
    // Baselines, best of rounds.
    double memcpy_gbps = 0, socket_gbps = 0, rocksdb_gbps = 0;
    Version v = MakeVersion(absl::StrCat("bench-", size), size, count, seed++);
    // Rounds interleave baselines and measurements, so a noisy neighbour on
    // this shared machine hits both alike; each figure is its best round.
    std::vector<double> put_gbps(planes.size(), 0), get_gbps(planes.size(), 0);
    std::vector<double> perftest_gbps(planes.size(), 0);
    std::vector<std::string> perftest_test(planes.size());
    for (int r = 0; r < rounds; ++r) {
      memcpy_gbps = std::max(memcpy_gbps, MemcpyGbps(size, v.bytes()));
      socket_gbps = std::max(socket_gbps, RawTcpGbps(size, v.bytes()));
      rocksdb_gbps =
          std::max(rocksdb_gbps, RocksDbGbps(absl::StrCat(workdir, "/raw-", size, "-", r), v));
      for (size_t i = 0; i < planes.size(); ++i) {
        Plane& p = planes[i];
        put_gbps[i] = std::max(put_gbps[i], v.bytes() / TimePut(*p.client, v) / 1e9);
        krul::v1::Manifest m = OrDie(p.client->Lookup(v.manifest.key()), "lookup");
        for (int g = 0; g < 2; ++g) {  // The first Get also warms the client's caches.
          uint64_t bytes = 0;
          double s = TimeGet(*p.client, m, &bytes);
          get_gbps[i] = std::max(get_gbps[i], bytes / s / 1e9);
        }
        if (p.name != "grpc") {
          perftest_gbps[i] =
              std::max(perftest_gbps[i], UcxPerftestGbps(p.name, size, count, &perftest_test[i]));
        }
        memcpy_gbps = std::max(memcpy_gbps, MemcpyGbps(size, v.bytes()));
      }
    }
    for (size_t i = 0; i < planes.size(); ++i) {
      Plane& p = planes[i];
      p.client->Delete(v.manifest.key()).IgnoreError();
      const double put_gbps_i = put_gbps[i], get_gbps_i = get_gbps[i];
      double base = p.name == "tcp" ? socket_gbps : memcpy_gbps;
      double get_ratio = get_gbps_i / base;
      double put_ratio = put_gbps_i / rocksdb_gbps;
      const double perftest_ratio = perftest_gbps[i] > 0 ? get_gbps_i / perftest_gbps[i] : 0;
      if (size >= (1 << 20)) {
        if (perftest_ratio > 0) big_ratios[p.name + "_get_perftest"].push_back(perftest_ratio);
        big_ratios[p.name + "_get"].push_back(get_ratio);
        big_ratios[p.name + "_put"].push_back(put_ratio);
        if (p.name == "grpc") big_ratios["grpc_get_socket"].push_back(get_gbps_i / socket_gbps);
      }
      results.push_back({{"block_bytes", size},
                         {"blocks", count},
                         {"plane", p.name},
                         {"put_gbps", put_gbps_i},
                         {"get_gbps", get_gbps_i},
                         {"memcpy_gbps", memcpy_gbps},
                         {"socket_gbps", socket_gbps},
                         {"rocksdb_writebatch_gbps", rocksdb_gbps},
                         {"get_vs_baseline", get_ratio},
                         {"put_vs_rocksdb", put_ratio}});
      if (perftest_gbps[i] > 0) {
        results.back()["ucx_perftest"] = perftest_test[i];
        results.back()["ucx_perftest_gbps"] = perftest_gbps[i];
        results.back()["get_vs_ucx_perftest"] = perftest_ratio;
      }
      if (!json_out) {
        std::printf("%-6s %-5s %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f\n",
                    krul::FormatByteSize(size).c_str(), p.name.c_str(), put_gbps_i, get_gbps_i,
                    memcpy_gbps, socket_gbps, perftest_gbps[i], rocksdb_gbps, get_ratio,
                    perftest_ratio, put_ratio);
        std::fflush(stdout);
      }
    }
  }

  // Latency: `c` threads, each Gets its own one-block version repeatedly.
  nlohmann::json latency = nlohmann::json::array();
  const uint64_t lat_size = PositiveSize(absl::GetFlag(FLAGS_latency_size).bytes, "--latency_size");
  const int ops = std::max(1, absl::GetFlag(FLAGS_latency_ops));
  if (!json_out) {
    std::printf("\nGet latency, one %s block per Get, %d Gets per client\n",
                krul::FormatByteSize(lat_size).c_str(), ops);
    std::printf("%-5s %7s %10s %10s %10s\n", "plane", "clients", "p50 ms", "p99 ms", "Gets/s");
  }
  for (Plane& p : planes) {
    const int max_clients = *std::max_element(clients.begin(), clients.end());
    std::vector<krul::v1::Manifest> manifests;
    for (int i = 0; i < max_clients; ++i) {
      Version v = MakeVersion(absl::StrCat("lat-", p.name, "-", i), lat_size, 1, 1000 + i);
      manifests.push_back(OrDie(p.client->Put(v.manifest, v.views()), "put"));
    }
    for (int c : clients) {
      std::vector<std::vector<double>> per(c);
      std::vector<std::thread> threads;
      auto t0 = Clock::now();
      for (int t = 0; t < c; ++t) {
        threads.emplace_back([&, t] {
          for (int i = 0; i < ops; ++i) {
            uint64_t bytes = 0;
            per[t].push_back(TimeGet(*p.client, manifests[t], &bytes) * 1e3);
          }
        });
      }
      for (auto& th : threads) th.join();
      double wall = Since(t0);
      std::vector<double> all;
      for (auto& v : per) all.insert(all.end(), v.begin(), v.end());
      double p50 = Percentile(all, 0.50), p99 = Percentile(all, 0.99);
      latency.push_back({{"plane", p.name},
                         {"clients", c},
                         {"block_bytes", lat_size},
                         {"p50_ms", p50},
                         {"p99_ms", p99},
                         {"gets_per_second", all.size() / wall}});
      if (!json_out) {
        std::printf("%-5s %7d %10.3f %10.3f %10.0f\n", p.name.c_str(), c, p50, p99,
                    all.size() / wall);
        std::fflush(stdout);
      }
    }
  }

  nlohmann::json summary;
  auto mean = [&](const std::string& k) { return GeoMean(big_ratios[k]); };
  if (big_ratios.count("shm_get")) summary["shm_get_vs_memcpy"] = mean("shm_get");
  if (big_ratios.count("tcp_get")) summary["tcp_get_vs_socket"] = mean("tcp_get");
  if (big_ratios.count("shm_get_perftest")) {
    summary["shm_get_vs_ucx_perftest"] = mean("shm_get_perftest");
  }
  if (big_ratios.count("tcp_get_perftest")) {
    summary["tcp_get_vs_ucx_perftest"] = mean("tcp_get_perftest");
  }
  if (big_ratios.count("grpc_get")) {
    summary["grpc_get_vs_memcpy"] = mean("grpc_get");
    summary["grpc_get_vs_socket"] = mean("grpc_get_socket");
  }
  // Durable put: the best data plane's put against RocksDB alone.
  double best_put = 0;
  for (const char* k : {"shm_put", "tcp_put", "grpc_put"}) {
    if (big_ratios.count(k)) {
      summary[std::string(k) + "_vs_rocksdb"] = mean(k);
      best_put = std::max(best_put, mean(k));
    }
  }
  summary["put_vs_rocksdb"] = best_put;
  if (json_out) {
    nlohmann::json out = summary;
    out["sizes"] = results;
    out["latency"] = latency;
    out["grant_scope"] = absl::GetFlag(FLAGS_grant_scope);
    out["notes"] =
        "ratios are geometric means over block sizes >= 1 MiB; get includes client-side "
        "checksum verification; put is write-through (RocksDB WAL, no fsync); ucx_perftest: "
        "ucp_get over posix shm / tag_bw over tcp on lo, same message size, one reused buffer";
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("\nsummary (block sizes >= 1 MiB): %s\n", summary.dump().c_str());
  }
  shm_server.reset();
  tcp_server.reset();
  std::filesystem::remove_all(workdir);
  return 0;
}
