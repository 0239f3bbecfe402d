// krul-bench-kv-mac: what the KV MAC (krul/kvformat/kv_mac.h) costs a
// restore, side by side with the checks every read already does, in one run.
//
// 1. Verification, CPU only: --verify_mb MB of encoded KV blocks per block
//    size in --block_kib, checked as a reader checks them: the XXH3 check
//    against the manifest (VerifyBlock, what every read does today) and,
//    for the same blocks, the MAC (the manifest seal once, then every
//    block's tag: VerifyManifestSeal + VerifyBlockMac). Alternating,
//    --repeats times, medians. Printed: GB/s of each, the MAC's time over
//    the XXH3 check's, and over the time the same bytes take on a link of
//    --link_gbps GB/s (bytes / rate: a rate, not a measurement).
// 2. Restore read, measured: --restore_mb MB stored as one version (blocks
//    of the first --block_kib size) in a krul-kvstore server in this process
//    (DRAM tier, 127.0.0.1, UCX shared memory unless --ucx=false), then read
//    back the way a restore's prefetch reads it (the worker's
//    ConversationStore::ReadBlocks of every block), with and without the
//    sealed layer (worker/session/sealed_conversation_store.h: tags on its
//    verify threads as the worker runs it, and inline on the reading
//    thread), alternating, --repeats times. Printed: median and minimum
//    read times, the rate, and the ratios to the unsealed read.
//
//   krul-bench-kv-mac --verify_mb=1024 --block_kib=64,1024,4096 --restore_mb=256
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "krul/kvformat/kv_block.h"
#include "krul/kvformat/kv_mac.h"
#include "krul/kvformat/manifest.h"
#include "krul/transport/ucx_transport.h"
#include "kvstore/server.h"
#include "worker/session/kvstore_conversation_store.h"
#include "worker/session/sealed_conversation_store.h"

ABSL_FLAG(int, verify_mb, 1024, "MB of blocks verified per block size (part 1)");
ABSL_FLAG(std::string, block_kib, "64,1024,4096", "Encoded block sizes (KiB), comma-separated");
ABSL_FLAG(int, restore_mb, 256, "MB stored and read back through a kvstore (part 2; 0 = skip)");
ABSL_FLAG(bool, ucx, true, "Part 2 over UCX (shared memory); false: inline gRPC");
ABSL_FLAG(int, repeats, 5, "Alternating repeats; medians are printed");
ABSL_FLAG(double, link_gbps, 1.0, "Link rate (GB/s) the MAC's time is set against in part 1");

namespace {

using Clock = std::chrono::steady_clock;
constexpr char kKeyHex[] = "3d1f0a9b8c7e6d5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f";

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "krul-bench-kv-mac: %s\n", what.c_str());
  std::exit(1);
}

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Version {
  krul::v1::Manifest manifest;
  std::vector<std::string> blocks;
};

// `total_bytes` of KV-shaped f32 blocks of about `block_bytes` each, random
// payloads (what the bytes are does not change the cost), sealed.
Version MakeVersion(size_t total_bytes, size_t block_bytes, const krul::KvMacKey& key,
                    const std::string& conversation_id) {
  Version v;
  krul::v1::Manifest& m = v.manifest;
  m.mutable_key()->set_tenant("bench");
  m.mutable_key()->set_conversation_id(conversation_id);
  m.mutable_key()->set_turn(1);
  m.set_model_id("bench");
  m.set_n_layers(1);
  std::mt19937_64 rng(7);
  // Rows of 256 floats; K and V of `tokens` rows each.
  const uint32_t kv_dim = 256;
  const uint32_t tokens = std::max<uint32_t>(
      1, static_cast<uint32_t>((block_bytes - krul::kBlockHeaderBytes) / (2 * kv_dim * 4)));
  const size_t payload_bytes = size_t{2} * tokens * kv_dim * 4;
  const size_t n = std::max<size_t>(1, total_bytes / (payload_bytes + krul::kBlockHeaderBytes));
  std::string payload(payload_bytes, '\0');
  for (size_t i = 0; i + 8 <= payload.size(); i += 8) {
    const uint64_t r = rng();
    std::memcpy(payload.data() + i, &r, 8);
  }
  for (size_t i = 0; i < n; ++i) {
    krul::BlockHeader h;
    h.dtype = krul::BlockDType::kF32;
    h.layout = krul::BlockLayout::kKvTokenMajor;
    h.rank = 3;
    h.token_begin = static_cast<uint32_t>(i * tokens);
    h.num_tokens = tokens;
    h.dims = {2, tokens, kv_dim, 0};
    payload[i % payload.size()] ^= 1;  // no two blocks alike
    auto encoded = krul::EncodeBlock(h, payload);
    if (!encoded.ok()) Die(encoded.status().ToString());
    auto ref = krul::MakeBlockRef(static_cast<uint32_t>(i), *encoded);
    if (!ref.ok()) Die(ref.status().ToString());
    *m.add_blocks() = *ref;
    v.blocks.push_back(*std::move(encoded));
  }
  std::vector<std::string_view> views(v.blocks.begin(), v.blocks.end());
  if (auto s = krul::SealManifest(key, views, m); !s.ok()) Die(s.ToString());
  return v;
}

size_t Bytes(const Version& v) {
  size_t b = 0;
  for (const std::string& s : v.blocks) b += s.size();
  return b;
}

void VerifyPart(const std::vector<int>& block_kib, const krul::KvMacKey& key) {
  const int repeats = absl::GetFlag(FLAGS_repeats);
  const double link = absl::GetFlag(FLAGS_link_gbps) * 1e9;
  std::printf("1. verification, CPU only: %d MB per block size, medians of %d\n",
              absl::GetFlag(FLAGS_verify_mb), repeats);
  std::printf("%10s %8s %12s %12s %12s %10s %18s\n", "block KiB", "blocks", "xxh3 GB/s", "mac GB/s",
              "mac ms", "mac/xxh3", "mac/link time");
  for (int kib : block_kib) {
    Version v =
        MakeVersion(size_t(absl::GetFlag(FLAGS_verify_mb)) << 20, size_t(kib) << 10, key, "verify");
    const size_t bytes = Bytes(v);
    std::vector<double> xxh3_s, mac_s;
    for (int r = 0; r < repeats; ++r) {
      auto t0 = Clock::now();
      for (int i = 0; i < v.manifest.blocks_size(); ++i) {
        if (!krul::VerifyBlock(v.manifest.blocks(i), v.blocks[i]).ok()) Die("xxh3 check failed");
      }
      xxh3_s.push_back(Since(t0));
      t0 = Clock::now();
      if (!krul::VerifyManifestSeal(key, v.manifest).ok()) Die("seal check failed");
      for (int i = 0; i < v.manifest.blocks_size(); ++i) {
        if (!krul::VerifyBlockMac(key, v.manifest, static_cast<uint32_t>(i), v.blocks[i]).ok()) {
          Die("tag check failed");
        }
      }
      mac_s.push_back(Since(t0));
    }
    const double x = Median(xxh3_s), m = Median(mac_s);
    std::printf("%10d %8d %12.2f %12.2f %12.1f %10.2f %17.1f%%\n", kib, v.manifest.blocks_size(),
                bytes / x / 1e9, bytes / m / 1e9, m * 1e3, m / x, 100.0 * m / (bytes / link));
  }
}

void RestorePart(int block_kib, const krul::KvMacKey& key) {
  const int repeats = absl::GetFlag(FLAGS_repeats);
  const bool ucx = absl::GetFlag(FLAGS_ucx);
  const size_t total = size_t(absl::GetFlag(FLAGS_restore_mb)) << 20;
  const absl::Duration deadline = absl::Seconds(120);
  std::unique_ptr<krul::Transport> server_transport;
  if (ucx) {
    auto t = krul::NewUcxTransport(krul::UcxTransportOptions{});
    if (!t.ok()) Die("UCX: " + t.status().ToString());
    server_transport = *std::move(t);
  }
  krul::kvstore::ServerOptions so;
  so.host = "127.0.0.1";
  so.port = 0;
  so.metrics_port = -1;
  so.store.tiers = krul::kvstore::TierMode::kDramOnly;
  so.store.dram_capacity_bytes = 2 * total + (64 << 20);
  so.store.max_staging_bytes = 2 * total + (64 << 20);
  so.store.default_ttl = absl::ZeroDuration();
  auto server = krul::kvstore::KvStoreServer::Start(so, std::move(server_transport));
  if (!server.ok()) Die("kvstore: " + server.status().ToString());
  krul::worker::KvstoreStoreOptions co;
  co.addresses = {(*server)->address()};
  co.ucx = ucx;
  co.restore_deadline = deadline;
  co.persist_deadline = deadline;
  auto plain = krul::worker::NewKvstoreConversationStore(co);
  auto inner = krul::worker::NewKvstoreConversationStore(co);
  auto inner_inline = krul::worker::NewKvstoreConversationStore(co);
  if (!plain.ok() || !inner.ok() || !inner_inline.ok()) Die("kvstore client failed");
  // As the worker makes it (tags checked on its verify threads) and with
  // every tag checked inline on the reading thread.
  std::unique_ptr<krul::worker::ConversationStore> sealed =
      krul::worker::NewSealedConversationStore(*std::move(inner),
                                               krul::KvMacKeyring::FromMasterKey(key));
  std::unique_ptr<krul::worker::ConversationStore> sealed_inline =
      krul::worker::NewSealedConversationStore(*std::move(inner_inline),
                                               krul::KvMacKeyring::FromMasterKey(key), 0);
  for (auto* s : {plain->get(), sealed.get(), sealed_inline.get()}) {
    if (auto h = s->Health(absl::Now() + deadline); !h.ok()) Die(h.ToString());
  }
  Version v = MakeVersion(total, size_t(block_kib) << 10, key, "restore");
  const size_t bytes = Bytes(v);
  // Written through the sealed store (it seals again: fresh salt).
  if (auto s = sealed->Write(v.manifest, v.blocks, absl::Now() + deadline); !s.ok()) {
    Die("write: " + s.ToString());
  }
  v.blocks.clear();
  std::vector<uint32_t> all;
  for (int i = 0; i < v.manifest.blocks_size(); ++i) all.push_back(static_cast<uint32_t>(i));
  auto read = [&](krul::worker::ConversationStore& store) {
    const auto t0 = Clock::now();
    auto m = store.LookupLatest("bench", "restore", absl::Now() + deadline);
    if (!m.ok()) Die("lookup: " + m.status().ToString());
    size_t got = 0;
    auto s = store.ReadBlocks(
        *m, all,
        [&got](uint32_t, std::string encoded) {
          got += encoded.size();
          return absl::OkStatus();
        },
        absl::Now() + deadline);
    if (!s.ok() || got != bytes) Die("read: " + s.ToString());
    return Since(t0);
  };
  read(**plain);  // warm: channels, UCX endpoints and registrations
  read(*sealed);
  read(*sealed_inline);
  std::vector<double> plain_s, sealed_s, inline_s;
  for (int r = 0; r < repeats; ++r) {
    plain_s.push_back(read(**plain));
    sealed_s.push_back(read(*sealed));
    inline_s.push_back(read(*sealed_inline));
  }
  const double p = Median(plain_s), s = Median(sealed_s), si = Median(inline_s);
  auto min = [](const std::vector<double>& times) {
    return *std::min_element(times.begin(), times.end());
  };
  const double pm = min(plain_s), sm = min(sealed_s), sim = min(inline_s);
  std::printf(
      "\n2. restore read through krul-kvstore (%s, DRAM, loopback): %.0f MB in %d blocks of %d "
      "KiB, medians of %d\n",
      ucx ? "UCX shared memory" : "inline gRPC", bytes / 1e6, v.manifest.blocks_size(), block_kib,
      repeats);
  std::printf("%-24s %10s %10s %10s\n", "", "median ms", "GB/s", "min ms");
  std::printf("%-24s %10.1f %10.2f %10.1f\n", "checksums (XXH3) only", p * 1e3, bytes / p / 1e9,
              pm * 1e3);
  std::printf("%-24s %10.1f %10.2f %10.1f  (tags on %d verify threads)\n", "checksums + MAC",
              s * 1e3, bytes / s / 1e9, sm * 1e3,
              std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, 4));
  std::printf("%-24s %10.1f %10.2f %10.1f\n", "checksums + MAC inline", si * 1e3, bytes / si / 1e9,
              sim * 1e3);
  std::printf("sealed / plain: median %.3f, min %.3f; inline: median %.3f, min %.3f\n", s / p,
              sm / pm, si / p, sim / pm);
  plain->reset();
  sealed.reset();
  sealed_inline.reset();
  if (auto st = (*server)->Shutdown(); !st.ok())
    std::fprintf(stderr, "%s\n", st.ToString().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "What the KV MAC costs a restore: verification CPU cost and a real restore read, with and "
      "without it, side by side");
  absl::ParseCommandLine(argc, argv);
  std::vector<int> kib;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_block_kib), ',')) {
    int k = 0;
    if (!absl::SimpleAtoi(s, &k) || k < 1) Die("bad --block_kib");
    kib.push_back(k);
  }
  if (kib.empty() || absl::GetFlag(FLAGS_repeats) < 1) Die("nothing to do");
  auto key = krul::KvMacKey::FromHex(kKeyHex);
  if (!key.ok()) Die(key.status().ToString());
  VerifyPart(kib, *key);
  if (absl::GetFlag(FLAGS_restore_mb) > 0) RestorePart(kib[kib.size() > 1 ? 1 : 0], *key);
  return 0;
}
