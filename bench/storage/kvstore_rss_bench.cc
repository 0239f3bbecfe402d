// krul-bench-kvstore-rss: the kvstore's resident memory against its DRAM
// cap. Starts krul-kvstore (DRAM + RocksDB, write-through) with
// --dram_capacity, writes --fill bytes of versions through the gRPC client
// (so the DRAM tier fills, evicts and keeps evicting), then lets it idle for
// --idle, sampling the server's VmRSS (/proc/<pid>/status) throughout.
// Prints, per configuration (--configs: extra server flags, ';'-separated
// sets, run one after another in this run): peak RSS, RSS after idling, the
// DRAM tier's bytes (Stats) and the overhead RSS - DRAM bytes.
//
//   krul-bench-kvstore-rss --dram_capacity=1G --fill=3G --idle=10s
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "krul/base/byte_size.h"
#include "krul/kvclient/kvstore_client.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/manifest.h"
#include "storage/kvstore_child.h"

ABSL_FLAG(std::string, server_binary, KRUL_KVSTORE_BINARY, "krul-kvstore to run");
ABSL_FLAG(krul::ByteSize, dram_capacity, krul::ByteSize(uint64_t{1} << 30), "--dram_capacity");
ABSL_FLAG(krul::ByteSize, fill, krul::ByteSize(uint64_t{3} << 30), "Bytes of versions written");
ABSL_FLAG(krul::ByteSize, version_bytes, krul::ByteSize(uint64_t{8} << 20),
          "Bytes per version (8 blocks each)");
ABSL_FLAG(absl::Duration, idle, absl::Seconds(10), "Idle time after the fill");
ABSL_FLAG(std::string, configs, ";--rocksdb_write_buffer=128M",
          "';'-separated sets of extra server flags (space-separated), one run each; an empty "
          "set is the defaults");
ABSL_FLAG(std::string, dir, "/tmp", "Where the RocksDB directories go");

namespace {

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "krul-bench-kvstore-rss: %s\n", what.c_str());
  std::exit(1);
}

// A krul-kvstore with its own RocksDB folder (removed afterwards) and the
// DRAM cap under test.
class Server {
 public:
  explicit Server(const std::vector<std::string>& extra)
      : db_(absl::StrCat(absl::GetFlag(FLAGS_dir), "/krul-rss-", getpid())) {
    std::vector<std::string> args = {
        absl::StrCat("--dram_capacity=", absl::GetFlag(FLAGS_dram_capacity).bytes),
        "--rocksdb_path=" + db_, "--log_level=error"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto child = krul::bench::KvStoreChild::Start(absl::GetFlag(FLAGS_server_binary), args);
    if (!child.ok()) Die("krul-kvstore did not start: " + child.status().ToString());
    child_ = *std::move(child);
  }
  ~Server() {
    child_.reset();  // stopped before its folder goes
    std::error_code ec;
    std::filesystem::remove_all(db_, ec);
  }
  std::string address() const { return child_->address(); }

  // VmRSS in bytes.
  uint64_t Rss() const {
    std::ifstream in(absl::StrCat("/proc/", child_->pid(), "/status"));
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) << 10;
    }
    return 0;
  }

 private:
  std::string db_;
  std::unique_ptr<krul::bench::KvStoreChild> child_;
};

// One version of 8 raw blocks, `bytes` in all, with pseudo-random payloads.
std::pair<krul::v1::Manifest, std::vector<std::string>> MakeVersion(int i, uint64_t bytes) {
  krul::v1::Manifest m;
  m.mutable_key()->set_tenant("rss");
  m.mutable_key()->set_conversation_id(absl::StrCat("conv-", i));
  m.mutable_key()->set_turn(1);
  m.set_model_id("synthetic");
  m.set_n_layers(8);
  std::mt19937_64 rng(i);
  std::vector<std::string> blocks;
  for (uint32_t b = 0; b < 8; ++b) {
    std::string payload(bytes / 8 - krul::kBlockHeaderBytes, '\0');
    for (size_t j = 0; j + 8 <= payload.size(); j += 8) {
      const uint64_t r = rng();
      std::memcpy(payload.data() + j, &r, 8);
    }
    krul::BlockHeader h;
    h.dtype = krul::BlockDType::kU8;
    h.layout = krul::BlockLayout::kRaw;
    h.rank = 1;
    h.layer = b;
    h.dims[0] = static_cast<uint32_t>(payload.size());
    auto enc = krul::EncodeBlock(h, payload);
    if (!enc.ok()) Die(enc.status().ToString());
    auto ref = krul::MakeBlockRef(b, *enc);
    if (!ref.ok()) Die(ref.status().ToString());
    *m.add_blocks() = *ref;
    blocks.push_back(*std::move(enc));
  }
  return {m, blocks};
}

double GiB(uint64_t b) { return static_cast<double>(b) / (1 << 30); }

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("The kvstore's resident memory against its DRAM cap.");
  absl::ParseCommandLine(argc, argv);
  const uint64_t cap = absl::GetFlag(FLAGS_dram_capacity).bytes;
  const uint64_t fill = absl::GetFlag(FLAGS_fill).bytes;
  const uint64_t version = absl::GetFlag(FLAGS_version_bytes).bytes;
  std::printf("cap %.2f GiB, fill %.2f GiB in %.0f MiB versions, idle %s\n", GiB(cap), GiB(fill),
              static_cast<double>(version) / (1 << 20),
              absl::FormatDuration(absl::GetFlag(FLAGS_idle)).c_str());
  std::printf("%-48s %10s %10s %10s %10s\n", "server flags", "peak_GiB", "idle_GiB", "dram_GiB",
              "overhead");
  for (absl::string_view config : absl::StrSplit(absl::GetFlag(FLAGS_configs), ';')) {
    std::vector<std::string> extra = absl::StrSplit(config, ' ', absl::SkipEmpty());
    Server server(extra);
    krul::KvStoreClientOptions o;
    o.addresses = {server.address()};
    o.rpc_timeout = absl::Seconds(60);
    auto client = krul::KvStoreClient::Create(o);
    if (!client.ok()) Die(client.status().ToString());
    uint64_t peak = 0;
    for (int i = 0; static_cast<uint64_t>(i) * version < fill; ++i) {
      auto [manifest, blocks] = MakeVersion(i, version);
      std::vector<std::string_view> views(blocks.begin(), blocks.end());
      if (auto s = (*client)->Put(manifest, views); !s.ok()) Die(s.status().ToString());
      peak = std::max(peak, server.Rss());
    }
    const absl::Time until = absl::Now() + absl::GetFlag(FLAGS_idle);
    while (absl::Now() < until) {
      peak = std::max(peak, server.Rss());
      absl::SleepFor(absl::Milliseconds(250));
    }
    const uint64_t idle = server.Rss();
    auto stats = (*client)->Stats(server.address());
    if (!stats.ok()) Die(stats.status().ToString());
    uint64_t dram = 0;
    for (const auto& t : stats->tiers()) {
      if (t.tier() == "dram") dram = t.bytes();
    }
    std::printf(
        "%-48s %10.3f %10.3f %10.3f %9.0f%%\n",
        config.empty() ? "(defaults)" : std::string(config).c_str(), GiB(peak), GiB(idle),
        GiB(dram),
        100.0 * (static_cast<double>(idle) - static_cast<double>(dram)) / static_cast<double>(cap));
  }
  return 0;
}
