// krul-bench-transport: Get (read) and Put (write) bandwidth of the KV store
// data plane over UCX shared memory and over UCX TCP on loopback, next to
// memcpy and a raw loopback TCP socket measured in the same run.
//
//   build/bin/krul-bench-transport [--json] [--sizes 64K,1M,64M]
//       [--wires shm,tcp] [--depth 4] [--min_seconds 0.3]
//       [--server_memory allocate|register] [--max_op_bytes 4M]
//       [--protocol auto|messages|rma] [--rounds 5] [--detect_peer_failure=false]
//
// Setup: a "server" and a "client" Transport in this process (the server's
// progress thread serves TCP requests as the kvstore would); the server's
// region comes from AllocateRegion (what the kvstore uses) unless
// --server_memory=register. Each measurement keeps --depth block transfers
// in flight (post all, wait in order, re-post), like a per-layer restore.
// Ratios: shm vs memcpy (same block size, same thread count: one), tcp vs a
// raw socket stream with the same block size per write/read. Each number is
// the best of --rounds interleaved rounds, for the baselines as well.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "krul/base/byte_size.h"
#include "krul/transport/transport.h"
#include "krul/transport/ucx_transport.h"
#include "storage/loopback_tcp.h"

ABSL_FLAG(bool, json, false, "Print the results as one JSON object");
ABSL_FLAG(std::string, sizes, "64K,256K,1M,4M,16M,64M", "Block sizes (K/M suffixes)");
ABSL_FLAG(std::string, wires, "shm,tcp", "UCX wires to measure: shm (UCX's choice) and/or tcp");
ABSL_FLAG(int, depth, 4, "Transfers kept in flight");
ABSL_FLAG(double, min_seconds, 0.2, "Minimum duration of each measurement");
ABSL_FLAG(std::string, server_memory, "allocate",
          "Server region: allocate (AllocateRegion) or register (RegisterRegion of malloc'd "
          "memory)");
ABSL_FLAG(krul::ByteSize, max_op_bytes, krul::ByteSize(4 << 20),
          "UcxTransportOptions.max_op_bytes");
ABSL_FLAG(std::string, protocol, "auto", "UcxTransportOptions.protocol: auto, messages or rma");
ABSL_FLAG(int, rounds, 5,
          "Rounds per block size; each round measures baseline, get and put back to back and "
          "the best round of each is reported (robust on a shared, noisy machine)");
ABSL_FLAG(krul::ByteSize, raw_chunk, krul::ByteSize(0),
          "Largest send()/recv() of the raw TCP baseline (a block is sent in chunks of this "
          "size; 0 = one call per block)");
ABSL_FLAG(bool, detect_peer_failure, true, "UcxTransportOptions.detect_peer_failure");
ABSL_FLAG(bool, verbose, false, "Print the UCX endpoint configuration");

namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// CPU seconds used by the whole process (all threads, user + system): CPU
// per byte is much less disturbed by other load than wall-clock bandwidth.
double ProcessCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct Measure {
  double gbps = 0;
  double cpu_s_per_gb = 0;
};

Measure MakeMeasure(uint64_t bytes, double elapsed, double cpu0) {
  return Measure{bytes / elapsed / 1e9, (ProcessCpuSeconds() - cpu0) / (bytes / 1e9)};
}

// Keeps the best bandwidth of several rounds, and the CPU cost of that round.
void KeepBest(Measure& best, const Measure& m) {
  if (m.gbps > best.gbps) best = m;
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "krul-bench-transport: %s\n", what.c_str());
  std::exit(1);
}

template <typename T>
T OrDie(absl::StatusOr<T> value, const char* what) {
  if (!value.ok()) Die(absl::StrFormat("%s: %s", what, value.status().ToString()));
  return *std::move(value);
}

// Page-aligned, pre-faulted memory.
struct Buffer {
  explicit Buffer(size_t n) : size(n) {
    data = static_cast<uint8_t*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096));
    if (data == nullptr) Die("out of memory");
    std::memset(data, 1, n);
  }
  ~Buffer() { std::free(data); }
  uint8_t* data;
  size_t size;
};

// ------------------------------------------------------------- baselines

Measure MemcpyGbps(size_t block, int depth, double min_seconds) {
  Buffer src(block * depth), dst(block * depth);
  uint64_t bytes = 0;
  int slot = 0;
  const double cpu0 = ProcessCpuSeconds();
  auto t0 = Clock::now();
  double elapsed;
  do {
    for (int i = 0; i < 8; ++i) {
      std::memcpy(dst.data + slot * block, src.data + slot * block, block);
      slot = (slot + 1) % depth;
      bytes += block;
    }
  } while ((elapsed = Since(t0)) < min_seconds);
  return MakeMeasure(bytes, elapsed, cpu0);
}

Measure RawTcpGbps(size_t block, size_t chunk, double min_seconds) {
  chunk = chunk == 0 ? block : std::min(chunk, block);
  auto pair = krul::bench::ConnectLoopbackTcp();
  if (!pair.ok()) Die(absl::StrFormat("raw tcp: %s", pair.status().message()));
  const int sender = pair->sender, receiver = pair->receiver;
  std::atomic<bool> stop{false};
  std::thread send_thread([&] {
    Buffer out(block);
    while (!stop.load(std::memory_order_relaxed)) {
      for (size_t done = 0; done < block;) {
        ssize_t n = send(sender, out.data + done, std::min(chunk, block - done), MSG_NOSIGNAL);
        if (n <= 0) return;
        done += n;
      }
    }
  });
  Buffer in(block);
  uint64_t bytes = 0;
  const double cpu0 = ProcessCpuSeconds();
  auto t0 = Clock::now();
  double elapsed;
  do {
    for (size_t done = 0; done < block;) {
      ssize_t n = recv(receiver, in.data + done, std::min(chunk, block - done), 0);
      if (n <= 0) Die("raw tcp: recv failed");
      done += n;
    }
    bytes += block;
  } while ((elapsed = Since(t0)) < min_seconds);
  Measure result = MakeMeasure(bytes, elapsed, cpu0);
  stop = true;
  shutdown(receiver, SHUT_RDWR);
  close(receiver);
  send_thread.join();
  close(sender);
  return result;
}

// ------------------------------------------------------------------ UCX

struct UcxPair {
  std::unique_ptr<krul::Transport> server, client;
  std::unique_ptr<Buffer> server_buffer, client_buffer;
  std::unique_ptr<krul::MemoryRegion> server_region, client_region;
  std::unique_ptr<krul::Endpoint> endpoint;
  std::unique_ptr<krul::RemoteRegion> remote;
};

std::unique_ptr<UcxPair> MakePair(bool tcp, size_t bytes, size_t max_op_bytes) {
  krul::UcxTransportOptions options;
  options.force_tcp = tcp;
  options.max_op_bytes = max_op_bytes;
  options.detect_peer_failure = absl::GetFlag(FLAGS_detect_peer_failure);
  const std::string protocol = absl::GetFlag(FLAGS_protocol);
  if (protocol == "messages") {
    options.protocol = krul::UcxTransportOptions::Protocol::kMessages;
  } else if (protocol == "rma") {
    options.protocol = krul::UcxTransportOptions::Protocol::kRma;
  } else if (protocol != "auto") {
    Die("--protocol takes auto, messages or rma");
  }
  auto pair = std::make_unique<UcxPair>();
  pair->server = OrDie(krul::NewUcxTransport(options), "server transport");
  pair->client = OrDie(krul::NewUcxTransport(options), "client transport");
  if (absl::GetFlag(FLAGS_server_memory) == "register") {
    pair->server_buffer = std::make_unique<Buffer>(bytes);
    pair->server_region =
        OrDie(pair->server->RegisterRegion(pair->server_buffer->data, bytes), "server region");
  } else {
    pair->server_region = OrDie(pair->server->AllocateRegion(bytes), "server region");
  }
  pair->client_buffer = std::make_unique<Buffer>(bytes);
  pair->client_region =
      OrDie(pair->client->RegisterRegion(pair->client_buffer->data, bytes), "client region");
  pair->endpoint = OrDie(pair->client->Connect(pair->server->address()), "connect");
  pair->remote = OrDie(
      pair->endpoint->ImportRegion(OrDie(pair->server_region->Describe(0, bytes), "describe")),
      "import");
  return pair;
}

Measure UcxGbps(UcxPair& pair, krul::TransferOp op, size_t block, int depth, double min_seconds) {
  std::vector<std::unique_ptr<krul::Transfer>> transfers;
  for (int i = 0; i < depth; ++i) {
    const krul::TransferSegment segment{i * block, i * block, block};
    transfers.push_back(OrDie(
        pair.client->PrepareTransfer(op, *pair.client_region, *pair.remote, std::span(&segment, 1)),
        "prepare"));
  }
  auto check = [](absl::Status s) {
    if (!s.ok()) Die("transfer: " + s.ToString());
  };
  // Warm-up round (wire-up, registration caches, page faults).
  for (auto& t : transfers) check(t->Post());
  for (auto& t : transfers) check(t->Wait());
  uint64_t bytes = 0;
  const double cpu0 = ProcessCpuSeconds();
  auto t0 = Clock::now();
  for (auto& t : transfers) check(t->Post());
  double elapsed;
  int next = 0;
  do {
    check(transfers[next]->Wait());
    bytes += block;
    check(transfers[next]->Post());
    next = (next + 1) % depth;
  } while ((elapsed = Since(t0)) < min_seconds);
  for (int i = 0; i < depth; ++i) {
    check(transfers[(next + i) % depth]->Wait());
    bytes += block;
  }
  elapsed = Since(t0);
  return MakeMeasure(bytes, elapsed, cpu0);
}

struct Row {
  std::string wire, op;
  size_t block;
  Measure ucx, baseline;
  std::string baseline_name;
};

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("UCX transport bandwidth vs memcpy and raw TCP");
  absl::ParseCommandLine(argc, argv);
  std::vector<size_t> sizes;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_sizes), ',')) {
    const uint64_t n = OrDie(krul::ParseByteSize(s), "--sizes");
    if (n == 0) Die("--sizes: a block size must be at least 1 byte");
    sizes.push_back(n);
  }
  const size_t max_op_bytes = absl::GetFlag(FLAGS_max_op_bytes).bytes;
  if (max_op_bytes == 0) Die("--max_op_bytes must be at least 1 byte");
  const int depth = std::max(1, absl::GetFlag(FLAGS_depth));
  const size_t raw_chunk = absl::GetFlag(FLAGS_raw_chunk).bytes;
  const double min_seconds = absl::GetFlag(FLAGS_min_seconds);
  size_t largest = 0;
  for (size_t s : sizes) largest = std::max(largest, s);

  std::vector<Row> rows;
  std::vector<std::string> wires = absl::StrSplit(absl::GetFlag(FLAGS_wires), ',');
  for (const std::string& wire : wires) {
    if (wire != "shm" && wire != "tcp") Die("--wires takes shm and/or tcp");
    std::unique_ptr<UcxPair> pair = MakePair(wire == "tcp", largest * depth, max_op_bytes);
    for (size_t block : sizes) {
      Measure baseline, get, put;
      for (int round = 0; round < std::max(1, absl::GetFlag(FLAGS_rounds)); ++round) {
        KeepBest(baseline, wire == "shm" ? MemcpyGbps(block, depth, min_seconds)
                                         : RawTcpGbps(block, raw_chunk, min_seconds));
        KeepBest(get, UcxGbps(*pair, krul::TransferOp::kRead, block, depth, min_seconds));
        KeepBest(put, UcxGbps(*pair, krul::TransferOp::kWrite, block, depth, min_seconds));
      }
      const char* baseline_name = wire == "shm" ? "memcpy" : "raw_tcp";
      rows.push_back(Row{wire, "get", block, get, baseline, baseline_name});
      rows.push_back(Row{wire, "put", block, put, baseline, baseline_name});
    }
    if (absl::GetFlag(FLAGS_verbose)) {
      std::fprintf(stderr, "%s endpoint after the runs:\n%s\n", wire.c_str(),
                   pair->endpoint->DebugString().c_str());
    }
  }

  if (absl::GetFlag(FLAGS_json)) {
    std::printf(
        "{\"depth\": %d, \"server_memory\": \"%s\", \"protocol\": \"%s\", "
        "\"max_op_bytes\": %zu, \"rounds\": %d, \"results\": [",
        depth, absl::GetFlag(FLAGS_server_memory).c_str(), absl::GetFlag(FLAGS_protocol).c_str(),
        max_op_bytes, absl::GetFlag(FLAGS_rounds));
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::printf(
          "%s\n  {\"wire\": \"%s\", \"op\": \"%s\", \"block_bytes\": %zu, \"gbps\": %.3f, "
          "\"cpu_s_per_gb\": %.3f, \"baseline\": \"%s\", \"baseline_gbps\": %.3f, "
          "\"baseline_cpu_s_per_gb\": %.3f, \"ratio\": %.3f}",
          i ? "," : "", r.wire.c_str(), r.op.c_str(), r.block, r.ucx.gbps, r.ucx.cpu_s_per_gb,
          r.baseline_name.c_str(), r.baseline.gbps, r.baseline.cpu_s_per_gb,
          r.ucx.gbps / r.baseline.gbps);
    }
    std::printf("\n]}\n");
    return 0;
  }
  std::printf("depth %d, server memory: %s, protocol: %s, max op %zu bytes, best of %d rounds\n",
              depth, absl::GetFlag(FLAGS_server_memory).c_str(),
              absl::GetFlag(FLAGS_protocol).c_str(), max_op_bytes, absl::GetFlag(FLAGS_rounds));
  std::printf("%-5s %-4s %9s %8s %9s %-8s %9s %9s %6s\n", "wire", "op", "block", "GB/s", "cpu s/GB",
              "baseline", "base GB/s", "cpu s/GB", "ratio");
  for (const Row& r : rows) {
    std::printf("%-5s %-4s %9zu %8.2f %9.3f %-8s %9.2f %9.3f %6.2f\n", r.wire.c_str(), r.op.c_str(),
                r.block, r.ucx.gbps, r.ucx.cpu_s_per_gb, r.baseline_name.c_str(), r.baseline.gbps,
                r.baseline.cpu_s_per_gb, r.ucx.gbps / r.baseline.gbps);
  }
  return 0;
}
