// Integration tests: krul-kvstore processes on 127.0.0.1 (ephemeral ports),
// driven through KvStoreClient and raw gRPC stubs.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "krul/kvclient/kvstore_client.h"
#include "kv_test_util.h"
#include "kvstore_process.h"
#include "test_support/shell.h"
#include "test_support/wait.h"

namespace krul::testing {
namespace {

using Process = std::unique_ptr<KvStoreProcess>;

// GET http://127.0.0.1:port/path with HTTP/1.0; returns the whole response
// (headers and body), empty on error.
std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  return out;
}

Process StartServer(const std::vector<std::string>& args) {
  absl::StatusOr<Process> p = KvStoreProcess::Start(args);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : nullptr;
}

std::unique_ptr<KvStoreClient> MakeClient(std::vector<std::string> addresses, int replication = 1,
                                          std::shared_ptr<BlockTransport> transport = nullptr) {
  KvStoreClientOptions o;
  o.addresses = std::move(addresses);
  o.replication = replication;
  o.rpc_timeout = absl::Seconds(5);
  o.transfer_timeout = absl::Seconds(60);
  o.initial_backoff = absl::Milliseconds(5);
  o.block_transport = std::move(transport);
  absl::StatusOr<std::unique_ptr<KvStoreClient>> c = KvStoreClient::Create(std::move(o));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// Puts `v`, looks it up, reads it back and compares every byte.
void RoundTrip(KvStoreClient& client, const TestVersion& v) {
  std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());
  v1::Manifest m = v.manifest;
  m.clear_blocks();  // The client fills the block list itself.
  absl::StatusOr<v1::Manifest> put = client.Put(m, blocks);
  ASSERT_TRUE(put.ok()) << put.status();
  absl::StatusOr<v1::Manifest> got = client.Lookup(v.manifest.key());
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->blocks_size(), v.manifest.blocks_size());
  for (int i = 0; i < got->blocks_size(); ++i) {
    EXPECT_EQ(got->blocks(i).payload_xxh3(), v.manifest.blocks(i).payload_xxh3());
  }
  absl::StatusOr<std::vector<std::string>> data = client.ReadAll(*got);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->size(), v.blocks.size());
  for (size_t i = 0; i < v.blocks.size(); ++i) {
    ASSERT_TRUE((*data)[i] == v.blocks[i]) << "block " << i << " differs";
  }
}

TEST(KvStoreIntegrationTest, RoundTripsFrom1KiBTo64MiB) {
  TempDir dir;
  Process server = StartServer({"--rocksdb_path=" + dir.Sub("db"), "--dram_capacity=256M"});
  ASSERT_NE(server, nullptr);
  std::unique_ptr<KvStoreClient> client = MakeClient({server->address()});
  uint32_t seed = 1;
  // One block of each size, then a many-block version.
  for (size_t payload :
       {size_t{1} << 10, size_t{64} << 10, size_t{1} << 20, size_t{16} << 20, size_t{64} << 20}) {
    TestVersion v =
        MakeVersion(Key("acme", absl::StrCat("size-", payload), 1), 1, payload - 64, seed++);
    SCOPED_TRACE(absl::StrCat("payload ", payload));
    RoundTrip(*client, v);
  }
  RoundTrip(*client, MakeVersion(Key("acme", "layers", 3), 64, 256 << 10, seed++));
}

// VmRSS of process `pid` in bytes (0 when it cannot be read).
uint64_t ResidentBytes(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10) << 10;
  }
  return 0;
}

// Small versions streamed through the DRAM tier to RocksDB: evicted blocks
// of 32 KiB between write batches used to leave glibc's heap full of free
// pages (RSS 1.0 GiB at a 256 MiB cap after 2 GiB); the kvstore trims it
// (--malloc_trim_interval), so RSS stays within the sizing rule of
// docs/operations.md: 0.9 x DRAM cap + 2 x memtable + 50 MiB, plus 25%.
TEST(KvStoreIntegrationTest, ResidentMemoryFollowsTheDramCapUnderManySmallVersions) {
  TempDir dir;
  Process server = StartServer({"--rocksdb_path=" + dir.Sub("db"), "--dram_capacity=64M",
                                "--rocksdb_write_buffer=32M", "--log_level=error"});
  ASSERT_NE(server, nullptr);
  std::unique_ptr<KvStoreClient> client = MakeClient({server->address()});
  const TestVersion v = MakeVersion(Key("acme", "rss", 1), 8, (32 << 10) - 64, 7);
  const std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());
  for (int i = 0; i < 3072; ++i) {  // 768 MiB, 12x the cap
    v1::Manifest m = v.manifest;
    m.clear_blocks();
    m.mutable_key()->set_conversation_id(absl::StrCat("rss-", i));
    ASSERT_TRUE(client->Put(m, blocks).ok()) << "version " << i;
  }
  const uint64_t bound = static_cast<uint64_t>((0.9 * 64 + 2 * 32 + 50) * 1.25 * (1 << 20));
  EXPECT_TRUE(WaitFor([&] { return ResidentBytes(server->pid()) < bound; }, absl::Seconds(10),
                      "the kvstore's RSS to fall within the sizing rule"))
      << "RSS " << ResidentBytes(server->pid()) / (1 << 20) << " MiB, bound " << bound / (1 << 20)
      << " MiB";
}

TEST(KvStoreIntegrationTest, AbortedAndUncommittedPutsAreNeverVisible) {
  TempDir dir;
  Process server = StartServer({"--rocksdb_path=" + dir.Sub("db")});
  ASSERT_NE(server, nullptr);
  std::unique_ptr<KvStoreClient> client = MakeClient({server->address()});
  v1::KvStore::StubInterface& stub = client->StubFor(server->address());
  TestVersion v = MakeVersion(Key("acme", "c", 1), 2, 100000, 5);
  for (bool abort : {false, true}) {
    grpc::ClientContext ctx;
    v1::BeginPutRequest begin;
    *begin.mutable_key() = v.manifest.key();
    for (uint64_t s : v.sizes()) begin.add_block_sizes(s);
    v1::BeginPutResponse r;
    ASSERT_TRUE(stub.BeginPut(&ctx, begin, &r).ok());
    ASSERT_EQ(r.targets_size(), 2);
    grpc::ClientContext wctx;
    v1::WriteBlocksResponse wr;
    auto writer = stub.WriteBlocks(&wctx, &wr);
    for (int i = 0; i < 2; ++i) {
      v1::BlockChunk c;
      c.set_put_id(r.put_id());
      c.set_index(i);
      c.set_data(v.blocks[i]);
      ASSERT_TRUE(writer->Write(c));
    }
    writer->WritesDone();
    ASSERT_TRUE(writer->Finish().ok());
    EXPECT_EQ(client->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
    if (abort) {
      grpc::ClientContext actx;
      v1::AbortPutRequest a;
      a.set_put_id(r.put_id());
      v1::AbortPutResponse ar;
      ASSERT_TRUE(stub.AbortPut(&actx, a, &ar).ok());
      grpc::ClientContext cctx;
      v1::CommitPutRequest commit;
      commit.set_put_id(r.put_id());
      *commit.mutable_manifest() = v.manifest;
      v1::CommitPutResponse cr;
      EXPECT_EQ(stub.CommitPut(&cctx, commit, &cr).error_code(), grpc::StatusCode::NOT_FOUND);
    }
    EXPECT_EQ(client->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  }
  absl::StatusOr<v1::StatsResponse> stats = client->Stats(server->address());
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->open_puts(), 1u) << "the uncommitted put is still open, invisible";
  // Kill -9 with the put open: after restart nothing of it exists.
  server->Kill();
  server = StartServer({"--rocksdb_path=" + dir.Sub("db")});
  ASSERT_NE(server, nullptr);
  client = MakeClient({server->address()});
  EXPECT_EQ(client->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
}

TEST(KvStoreIntegrationTest, ConcurrentWritersAndReaders) {
  TempDir dir;
  Process server = StartServer({"--rocksdb_path=" + dir.Sub("db"), "--dram_capacity=8M"});
  ASSERT_NE(server, nullptr);
  std::unique_ptr<KvStoreClient> client = MakeClient({server->address()});
  constexpr int kThreads = 4;
  constexpr int kPerThread = 6;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        // Alternate inline (small) and streamed (large) versions.
        size_t payload = i % 2 ? (1 << 20) : (16 << 10);
        TestVersion v =
            MakeVersion(Key("acme", absl::StrCat("t", t, "-", i), 1), 3, payload, 100 * t + i);
        std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());
        if (!client->Put(v.manifest, blocks).ok()) ++failures;
        absl::StatusOr<v1::Manifest> m = client->Lookup(v.manifest.key());
        absl::StatusOr<std::vector<std::string>> data =
            m.ok() ? client->ReadAll(*m) : absl::StatusOr<std::vector<std::string>>(m.status());
        if (!data.ok() || *data != v.blocks) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures, 0);
}

TEST(KvStoreIntegrationTest, RendezvousSpreadsAndMovesAQuarterWhenAShardJoins) {
  // Pure client-side ranking; then checked against real servers below.
  std::vector<std::string> three = {"10.0.0.1:7070", "10.0.0.2:7070", "10.0.0.3:7070"};
  std::vector<std::string> four = three;
  four.push_back("10.0.0.4:7070");
  // Nothing connects to these addresses: plaintext to them is acceptable.
  auto ranking_client = [](std::vector<std::string> addresses) {
    KvStoreClientOptions o;
    o.addresses = std::move(addresses);
    o.allow_insecure = true;
    return *KvStoreClient::Create(std::move(o));
  };
  std::unique_ptr<KvStoreClient> c3 = ranking_client(three);
  std::unique_ptr<KvStoreClient> c4 = ranking_client(four);
  std::map<std::string, int> load;
  int moved = 0;
  for (int i = 0; i < 1000; ++i) {
    std::string conv = absl::StrCat("conversation-", i);
    std::string before = c3->ReplicasFor("acme", conv)[0];
    std::string after = c4->ReplicasFor("acme", conv)[0];
    ++load[before];
    if (before != after) {
      ++moved;
      EXPECT_EQ(after, four[3]) << "keys may only move to the new shard";
    }
  }
  ASSERT_EQ(load.size(), 3u);
  for (const auto& [shard, n] : load) {
    EXPECT_LE(n, 1.5 * 1000 / 3) << shard;
    EXPECT_GE(n, 0.5 * 1000 / 3) << shard;
  }
  EXPECT_GT(moved, 180);
  EXPECT_LT(moved, 320);
}

TEST(KvStoreIntegrationTest, ThreeShardsHoldWhatRendezvousAssigns) {
  TempDir dir;
  std::vector<Process> servers;
  std::vector<std::string> addresses;
  for (int i = 0; i < 3; ++i) {
    servers.push_back(StartServer({"--rocksdb_path=" + dir.Sub(absl::StrCat("db", i))}));
    ASSERT_NE(servers.back(), nullptr);
    addresses.push_back(servers.back()->address());
  }
  std::unique_ptr<KvStoreClient> client = MakeClient(addresses);
  std::map<std::string, uint64_t> expected;
  for (int i = 0; i < 60; ++i) {
    TestVersion v = MakeVersion(Key("acme", absl::StrCat("conv", i), 1), 1, 1000, 300 + i);
    std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());
    ASSERT_TRUE(client->Put(v.manifest, blocks).ok());
    ++expected[client->ReplicasFor("acme", absl::StrCat("conv", i))[0]];
  }
  for (const std::string& a : addresses) {
    absl::StatusOr<v1::StatsResponse> stats = client->Stats(a);
    ASSERT_TRUE(stats.ok());
    uint64_t objects = 0;
    for (const v1::TierStats& t : stats->tiers()) {
      if (t.tier() == "rocksdb") objects = t.objects();
    }
    EXPECT_EQ(objects, expected[a]) << a;
    EXPECT_GT(objects, 0u) << a;
  }
}

TEST(KvStoreIntegrationTest, ReplicationTwoSurvivesKillingAShard) {
  TempDir dir;
  std::vector<Process> servers;
  std::vector<std::string> addresses;
  for (int i = 0; i < 3; ++i) {
    servers.push_back(StartServer({"--rocksdb_path=" + dir.Sub(absl::StrCat("db", i))}));
    ASSERT_NE(servers.back(), nullptr);
    addresses.push_back(servers.back()->address());
  }
  std::unique_ptr<KvStoreClient> client = MakeClient(addresses, /*replication=*/2);
  std::vector<TestVersion> versions;
  for (int i = 0; i < 30; ++i) {
    versions.push_back(MakeVersion(Key("acme", absl::StrCat("conv", i), 1), 2,
                                   i % 3 == 0 ? (2 << 20) : 4000, 500 + i));
    std::vector<std::string_view> blocks(versions.back().blocks.begin(),
                                         versions.back().blocks.end());
    ASSERT_TRUE(client->Put(versions.back().manifest, blocks).ok());
  }
  servers[1]->Kill();
  int primary_on_dead = 0;
  for (const TestVersion& v : versions) {
    if (client->ReplicasFor("acme", v.manifest.key().conversation_id())[0] == addresses[1]) {
      ++primary_on_dead;
    }
    absl::StatusOr<v1::Manifest> m = client->Lookup(v.manifest.key());
    ASSERT_TRUE(m.ok()) << m.status();
    absl::StatusOr<std::vector<std::string>> data = client->ReadAll(*m);
    ASSERT_TRUE(data.ok()) << data.status();
    EXPECT_TRUE(*data == v.blocks);
  }
  EXPECT_GT(primary_on_dead, 0) << "the test must kill a shard that is first choice for some";
}

TEST(KvStoreIntegrationTest, RestartServesEveryCommittedVersion) {
  TempDir dir;
  std::vector<std::string> args = {"--rocksdb_path=" + dir.Sub("db"), "--dram_capacity=4M"};
  Process server = StartServer(args);
  ASSERT_NE(server, nullptr);
  std::unique_ptr<KvStoreClient> client = MakeClient({server->address()});
  std::vector<TestVersion> versions;
  for (int i = 0; i < 10; ++i) {
    versions.push_back(
        MakeVersion(Key("acme", absl::StrCat("conv", i), i), 3, i % 2 ? (1 << 20) : 3000, 700 + i));
    std::vector<std::string_view> blocks(versions.back().blocks.begin(),
                                         versions.back().blocks.end());
    ASSERT_TRUE(client->Put(versions.back().manifest, blocks).ok());
  }
  // A crash (kill -9): write-through commits are in RocksDB's WAL.
  server->Kill();
  server = StartServer(args);
  ASSERT_NE(server, nullptr);
  client = MakeClient({server->address()});
  for (const TestVersion& v : versions) {
    absl::StatusOr<v1::Manifest> m = client->Lookup(v.manifest.key());
    ASSERT_TRUE(m.ok()) << m.status();
    absl::StatusOr<std::vector<std::string>> data = client->ReadAll(*m);
    ASSERT_TRUE(data.ok()) << data.status();
    EXPECT_TRUE(*data == v.blocks);
  }
  // A clean stop, then once more.
  EXPECT_EQ(server->Terminate(), 0);
  server = StartServer(args);
  ASSERT_NE(server, nullptr);
  client = MakeClient({server->address()});
  absl::StatusOr<v1::Manifest> m = client->Lookup(versions[9].manifest.key());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(*client->ReadAll(*m) == versions[9].blocks);
}

TEST(KvStoreIntegrationTest, SigtermLetsAnOpenPutCommitThenFlushes) {
  TempDir dir;
  std::vector<std::string> args = {"--rocksdb_path=" + dir.Sub("db"), "--write_mode=write-back",
                                   "--shutdown_grace=20s"};
  Process server = StartServer(args);
  ASSERT_NE(server, nullptr);
  std::unique_ptr<KvStoreClient> client = MakeClient({server->address()});
  v1::KvStore::StubInterface& stub = client->StubFor(server->address());
  TestVersion early = MakeVersion(Key("acme", "early", 1), 2, 50000, 800);
  std::vector<std::string_view> eb(early.blocks.begin(), early.blocks.end());
  ASSERT_TRUE(client->Put(early.manifest, eb).ok());

  TestVersion v = MakeVersion(Key("acme", "inflight", 1), 1, 100000, 801);
  grpc::ClientContext ctx;
  v1::BeginPutRequest begin;
  *begin.mutable_key() = v.manifest.key();
  begin.add_block_sizes(v.blocks[0].size());
  v1::BeginPutResponse r;
  ASSERT_TRUE(stub.BeginPut(&ctx, begin, &r).ok());
  kill(server->pid(), SIGTERM);
  // The signal is handled on another thread: wait until the server says it
  // is draining (it stops taking puts before it reports so).
  ASSERT_TRUE(WaitForOk(
      [&]() -> absl::Status {
        grpc::ClientContext hctx;
        v1::HealthResponse health;
        grpc::Status s = stub.Health(&hctx, v1::HealthRequest(), &health);
        if (!s.ok()) return absl::UnavailableError(s.error_message());
        if (health.status() != v1::HealthResponse::DRAINING) {
          return absl::FailedPreconditionError(
              v1::HealthResponse::ServingStatus_Name(health.status()));
        }
        return absl::OkStatus();
      },
      absl::Seconds(60), "Health to report DRAINING after SIGTERM"));
  // Draining: no new puts...
  grpc::ClientContext ctx2;
  v1::BeginPutResponse r2;
  begin.mutable_key()->set_conversation_id("too-late");
  EXPECT_EQ(stub.BeginPut(&ctx2, begin, &r2).error_code(), grpc::StatusCode::UNAVAILABLE);
  // ...but the open one may finish.
  grpc::ClientContext wctx;
  v1::WriteBlocksResponse wr;
  auto writer = stub.WriteBlocks(&wctx, &wr);
  v1::BlockChunk c;
  c.set_put_id(r.put_id());
  c.set_data(v.blocks[0]);
  ASSERT_TRUE(writer->Write(c));
  writer->WritesDone();
  ASSERT_TRUE(writer->Finish().ok());
  grpc::ClientContext cctx;
  v1::CommitPutRequest commit;
  commit.set_put_id(r.put_id());
  *commit.mutable_manifest() = v.manifest;
  v1::CommitPutResponse cr;
  grpc::Status cs = stub.CommitPut(&cctx, commit, &cr);
  ASSERT_TRUE(cs.ok()) << cs.error_code() << ": " << cs.error_message();
  EXPECT_EQ(server->Terminate(), 0);

  // Write-back data was flushed on the way out.
  server = StartServer(args);
  ASSERT_NE(server, nullptr);
  client = MakeClient({server->address()});
  for (const TestVersion* t : {&early, &v}) {
    absl::StatusOr<v1::Manifest> m = client->Lookup(t->manifest.key());
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_TRUE(*client->ReadAll(*m) == t->blocks);
  }
}

// Flips one byte of every block a wrapped transport delivers or sends, for
// the first `budget` blocks.
class CorruptingTransport : public BlockTransport {
 public:
  CorruptingTransport(std::unique_ptr<BlockTransport> inner, int budget)
      : budget_(budget), inner_(std::move(inner)) {}
  std::string_view name() const override { return inner_->name(); }
  absl::Status Write(v1::KvStore::StubInterface& stub, const std::string& address,
                     const v1::BeginPutResponse& reservation,
                     std::span<const std::string_view> blocks, absl::Time deadline) override {
    std::vector<std::string> copies(blocks.begin(), blocks.end());
    for (std::string& b : copies) {
      if (budget_-- > 0) b[b.size() / 2] ^= 0x01;
    }
    std::vector<std::string_view> views(copies.begin(), copies.end());
    return inner_->Write(stub, address, reservation, views, deadline);
  }
  absl::Status Read(v1::KvStore::StubInterface& stub, const std::string& address,
                    const v1::Manifest& manifest, std::span<const uint32_t> indices,
                    const RawBlockCallback& on_block, absl::Time deadline) override {
    return inner_->Read(
        stub, address, manifest, indices,
        [&](uint32_t index, std::string_view encoded, std::optional<uint64_t>) {
          std::string copy(encoded);
          if (budget_-- > 0) copy[copy.size() - 1] ^= 0x80;
          return on_block(index, copy, std::nullopt);  // The bytes changed: no hash.
        },
        deadline);
  }
  std::atomic<int> budget_;

 private:
  std::unique_ptr<BlockTransport> inner_;
};

TEST(KvStoreIntegrationTest, CorruptionInTransitIsDataLossNeverBadBytes) {
  TempDir dir;
  Process server = StartServer({"--rocksdb_path=" + dir.Sub("db")});
  ASSERT_NE(server, nullptr);
  auto corrupt = std::make_shared<CorruptingTransport>(NewGrpcBlockTransport(), 0);
  std::unique_ptr<KvStoreClient> client = MakeClient({server->address()}, 1, corrupt);
  TestVersion v = MakeVersion(Key("acme", "c", 1), 3, 2 << 20, 900);  // 6 MiB: streamed
  std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());

  // Damaged on the way in, every attempt: the server refuses the commit.
  corrupt->budget_ = 1000;
  absl::Status put = client->Put(v.manifest, blocks).status();
  EXPECT_EQ(put.code(), absl::StatusCode::kDataLoss) << put;
  EXPECT_EQ(client->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  // Damaged once: the retry succeeds.
  corrupt->budget_ = 1;
  ASSERT_TRUE(client->Put(v.manifest, blocks).ok());

  // Damaged on the way out: no callback ever sees the bad block.
  absl::StatusOr<v1::Manifest> m = client->Lookup(v.manifest.key());
  ASSERT_TRUE(m.ok());
  corrupt->budget_ = 1000;
  int delivered = 0;
  absl::Status read = client->Read(*m, {}, [&](uint32_t, std::string_view, const DecodedBlock&) {
    ++delivered;
    return absl::OkStatus();
  });
  EXPECT_EQ(read.code(), absl::StatusCode::kDataLoss) << read;
  EXPECT_EQ(delivered, 0);
  corrupt->budget_ = 2;  // First two deliveries damaged; retries recover.
  absl::StatusOr<std::vector<std::string>> data = client->ReadAll(*m);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_TRUE(*data == v.blocks);
  absl::StatusOr<v1::StatsResponse> stats = client->Stats(server->address());
  ASSERT_TRUE(stats.ok());
  EXPECT_GE(stats->checksum_failures(), 3u) << "the server counted the damaged commits";
}

TEST(KvStoreIntegrationTest, BadRequestsGetClearErrorsAndTheServerStaysUp) {
  TempDir dir;
  Process server =
      StartServer({"--rocksdb_path=" + dir.Sub("db"), "--tenant_quotas=acme=2M,small=10K",
                   "--allow_unknown_tenants=false", "--max_inline=1M", "--shutdown_grace=1s"});
  ASSERT_NE(server, nullptr);
  std::unique_ptr<KvStoreClient> client = MakeClient({server->address()});
  v1::KvStore::StubInterface& stub = client->StubFor(server->address());
  auto expect = [](grpc::Status s, grpc::StatusCode code, const std::string& mentions) {
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_NE(s.error_message().find(mentions), std::string::npos)
        << "'" << s.error_message() << "' should mention '" << mentions << "'";
  };
  TestVersion v = MakeVersion(Key("acme", "c", 1), 1, 1000, 1);
  {  // Unknown field.
    grpc::ClientContext ctx;
    v1::LookupRequest req;
    *req.mutable_key() = v.manifest.key();
    req.GetReflection()->MutableUnknownFields(&req)->AddVarint(99, 1);
    v1::LookupResponse resp;
    expect(stub.Lookup(&ctx, req, &resp), grpc::StatusCode::INVALID_ARGUMENT, "#99");
  }
  {  // Unknown field nested in the key.
    grpc::ClientContext ctx;
    v1::LookupRequest req;
    *req.mutable_key() = v.manifest.key();
    req.mutable_key()->GetReflection()->MutableUnknownFields(req.mutable_key())->AddFixed32(7, 1);
    v1::LookupResponse resp;
    expect(stub.Lookup(&ctx, req, &resp), grpc::StatusCode::INVALID_ARGUMENT, "key#7");
  }
  {  // Missing key, empty tenant.
    grpc::ClientContext ctx;
    v1::BeginPutRequest req;
    req.add_block_sizes(100);
    v1::BeginPutResponse resp;
    expect(stub.BeginPut(&ctx, req, &resp), grpc::StatusCode::INVALID_ARGUMENT, "key");
    grpc::ClientContext ctx2;
    *req.mutable_key() = Key("", "c", 1);
    expect(stub.BeginPut(&ctx2, req, &resp), grpc::StatusCode::INVALID_ARGUMENT, "tenant");
  }
  {  // Absurd sizes.
    grpc::ClientContext ctx;
    v1::BeginPutRequest req;
    *req.mutable_key() = v.manifest.key();
    req.add_block_sizes(uint64_t{1} << 50);
    v1::BeginPutResponse resp;
    expect(stub.BeginPut(&ctx, req, &resp), grpc::StatusCode::INVALID_ARGUMENT, "block_sizes[0]");
    grpc::ClientContext ctx2;
    req.clear_block_sizes();
    for (int i = 0; i < 100000; ++i) req.add_block_sizes(100);
    expect(stub.BeginPut(&ctx2, req, &resp), grpc::StatusCode::INVALID_ARGUMENT, "block_sizes");
    grpc::ClientContext ctx3;
    req.clear_block_sizes();
    for (int i = 0; i < 3; ++i) req.add_block_sizes(1 << 20);
    expect(stub.BeginPut(&ctx3, req, &resp), grpc::StatusCode::RESOURCE_EXHAUSTED, "acme");
  }
  {  // Wrong lengths: chunk overrunning its block, block count mismatch.
    grpc::ClientContext ctx;
    v1::BeginPutRequest req;
    *req.mutable_key() = v.manifest.key();
    req.add_block_sizes(v.blocks[0].size());
    v1::BeginPutResponse r;
    ASSERT_TRUE(stub.BeginPut(&ctx, req, &r).ok());
    grpc::ClientContext wctx;
    v1::WriteBlocksResponse wr;
    auto writer = stub.WriteBlocks(&wctx, &wr);
    v1::BlockChunk c;
    c.set_put_id(r.put_id());
    c.set_data(v.blocks[0] + "extra");
    writer->Write(c);
    writer->WritesDone();
    expect(writer->Finish(), grpc::StatusCode::INVALID_ARGUMENT, "overrun");
    grpc::ClientContext pctx;
    v1::PutRequest put;
    *put.mutable_manifest() = v.manifest;
    put.add_blocks(v.blocks[0]);
    put.add_blocks(v.blocks[0]);
    v1::PutResponse pr;
    expect(stub.Put(&pctx, put, &pr), grpc::StatusCode::INVALID_ARGUMENT, "blocks");
    grpc::ClientContext pctx2;
    put.clear_blocks();
    put.add_blocks(v.blocks[0].substr(0, 500));
    expect(stub.Put(&pctx2, put, &pr), grpc::StatusCode::INVALID_ARGUMENT, "encoded_bytes");
  }
  {  // A manifest that lies about its block.
    grpc::ClientContext ctx;
    v1::PutRequest put;
    *put.mutable_manifest() = v.manifest;
    put.mutable_manifest()->mutable_blocks(0)->set_payload_xxh3(42);
    put.add_blocks(v.blocks[0]);
    v1::PutResponse pr;
    expect(stub.Put(&ctx, put, &pr), grpc::StatusCode::DATA_LOSS, "block 0");
  }
  {  // Unknown tenant, quota.
    TestVersion stranger = MakeVersion(Key("mallory", "c", 1), 1, 1000, 2);
    std::vector<std::string_view> b(stranger.blocks.begin(), stranger.blocks.end());
    absl::Status s = client->Put(stranger.manifest, b).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
    EXPECT_NE(s.message().find("mallory"), std::string::npos);
    TestVersion big = MakeVersion(Key("small", "c", 1), 4, 4000, 3);
    std::vector<std::string_view> bb(big.blocks.begin(), big.blocks.end());
    s = client->Put(big.manifest, bb).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  }
  {  // Too big for an inline Put (over --max_inline): refused.
    TestVersion big = MakeVersion(Key("acme", "big", 1), 1, 1500000, 4);
    grpc::ClientContext ctx;
    v1::PutRequest put;
    *put.mutable_manifest() = big.manifest;
    put.add_blocks(big.blocks[0]);
    v1::PutResponse pr;
    expect(stub.Put(&ctx, put, &pr), grpc::StatusCode::FAILED_PRECONDITION, "inline");
    // And a message above gRPC's limit never reaches the service.
    grpc::ClientContext ctx2;
    put.add_blocks(std::string(5 << 20, 'x'));
    EXPECT_EQ(stub.Put(&ctx2, put, &pr).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  {  // Unknown put, lease, grant.
    grpc::ClientContext ctx;
    v1::CommitPutRequest commit;
    commit.set_put_id(12345);
    *commit.mutable_manifest() = v.manifest;
    v1::CommitPutResponse cr;
    expect(stub.CommitPut(&ctx, commit, &cr), grpc::StatusCode::NOT_FOUND, "12345");
    grpc::ClientContext uctx;
    v1::UnpinRequest unpin;
    unpin.set_lease_id(777);
    v1::UnpinResponse ur;
    expect(stub.Unpin(&uctx, unpin, &ur), grpc::StatusCode::NOT_FOUND, "777");
    grpc::ClientContext gctx;
    v1::GrantReadRequest grant;
    *grant.mutable_key() = v.manifest.key();
    v1::GrantReadResponse gr;
    expect(stub.GrantRead(&gctx, grant, &gr), grpc::StatusCode::FAILED_PRECONDITION, "UCX");
  }
  // Still serving, and a normal put works.
  absl::StatusOr<v1::HealthResponse> health = client->Health(server->address());
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(health->status(), v1::HealthResponse::SERVING);
  std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());
  ASSERT_TRUE(client->Put(v.manifest, blocks).ok());
  EXPECT_EQ(server->Terminate(), 0);
}

TEST(KvStoreIntegrationTest, MetricsEndpointExportsTheDesignNames) {
  TempDir dir;
  Process server = StartServer({"--rocksdb_path=" + dir.Sub("db"), "--metrics_port=0"});
  ASSERT_NE(server, nullptr);
  ASSERT_GT(server->metrics_port(), 0);
  std::unique_ptr<KvStoreClient> client = MakeClient({server->address()});
  TestVersion v = MakeVersion(Key("acme", "c", 1), 2, 3000, 1);
  std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());
  ASSERT_TRUE(client->Put(v.manifest, blocks).ok());
  absl::StatusOr<v1::Manifest> m = client->Lookup(v.manifest.key());
  ASSERT_TRUE(m.ok());
  ASSERT_TRUE(client->ReadAll(*m).ok());
  EXPECT_EQ(client->Lookup(Key("acme", "nope", 1)).status().code(), absl::StatusCode::kNotFound);
  const std::string body = HttpGet(server->metrics_port(), "/metrics");
  ASSERT_NE(body.find(" 200 OK"), std::string::npos) << body.substr(0, 200);
  for (const char* want :
       {"krul_kvstore_bytes{tier=\"dram\"}", "krul_kvstore_objects{tier=\"rocksdb\"} 1",
        "krul_kvstore_requests_total{code=\"OK\",op=\"Put\"} 1",
        "krul_kvstore_requests_total{code=\"NOT_FOUND\",op=\"Lookup\"} 1",
        "krul_kvstore_op_seconds_bucket{op=\"ReadBlocks\"",
        "krul_kvstore_hits_total{tier=\"dram\"} 2", "krul_kvstore_misses_total 1",
        "krul_kvstore_checksum_failures_total 0",
        "krul_kvstore_transfer_bytes_total{dir=\"in\",transport=\"grpc\"}"}) {
    EXPECT_NE(body.find(want), std::string::npos) << "missing: " << want;
  }
}

// `command`'s stdout and stderr, and its exit code.
std::pair<std::string, int> RunShell(const std::string& command) {
  const krul::testing::ShellResult r = krul::testing::RunShell(command);
  return {r.output, r.exit_code};
}

TEST(KvStoreIntegrationTest, HelpListsTheServersOwnFlags) {
  auto [out, code] = RunShell(absl::StrCat(KRUL_KVSTORE_BINARY, " --help"));
  EXPECT_EQ(out.find("No flags matched"), std::string::npos) << out;
  for (const char* flag : {"--tls_cert_file", "--tenant_tokens_file", "--insecure",
                           "--keep_versions", "--rocksdb_recover", "--metrics_host"}) {
    EXPECT_NE(out.find(flag), std::string::npos) << flag << " missing from --help:\n" << out;
  }
}

TEST(KvStoreIntegrationTest, HashTokenPrintsATokensFileLine) {
  // sha256("0123456789abcdef-token"), as `printf %s ... | sha256sum` prints it.
  auto [out, code] = RunShell(absl::StrCat("printf '0123456789abcdef-token\\n' | ",
                                           KRUL_KVSTORE_BINARY, " hash-token alice"));
  EXPECT_EQ(code, 0) << out;
  EXPECT_EQ(out, "alice:3c18109ce815143332983177dfecc23e848446a79ddcca321f551496e0de9c70\n");
  auto [bad, bad_code] =
      RunShell(absl::StrCat("printf 'short' | ", KRUL_KVSTORE_BINARY, " hash-token alice"));
  EXPECT_EQ(bad_code, 2) << bad;
}

TEST(KvStoreIntegrationTest, RefusesToStartInTheClearOnANetworkAddress) {
  auto [out, code] = RunShell(
      absl::StrCat(KRUL_KVSTORE_BINARY, " --host=0.0.0.0 --port=0 --metrics_port=-1 --tiers=dram"));
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(out.find("--insecure"), std::string::npos) << out;
}

}  // namespace
}  // namespace krul::testing
