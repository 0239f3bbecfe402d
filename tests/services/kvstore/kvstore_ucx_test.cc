// Integration tests of the UCX data plane: krul-kvstore --ucx processes and
// a client whose blocks move over UCX (shared memory, or TCP on loopback).
#include <grpcpp/grpcpp.h>

#include <span>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "krul/kvclient/kvstore_client.h"
#include "krul/transport/ucx_transport.h"
#include "kv_test_util.h"
#include "kvstore_process.h"

namespace krul::testing {
namespace {

// UCX needs a usable transport on this host (shared memory or loopback
// TCP); where it has none the tests skip rather than fail.
#define KRUL_REQUIRE_UCX()                                                        \
  do {                                                                            \
    absl::StatusOr<std::unique_ptr<Transport>> probe = NewUcxTransport();         \
    if (!probe.ok() && probe.status().code() == absl::StatusCode::kUnavailable) { \
      GTEST_SKIP() << "UCX is not usable here: " << probe.status();               \
    }                                                                             \
  } while (0)

struct UcxSetup {
  std::unique_ptr<KvStoreProcess> server;
  std::unique_ptr<Transport> transport;
  std::unique_ptr<KvStoreClient> client;
};

// A server with --ucx and a client using UCX for every put and read.
UcxSetup Start(const TempDir& dir, bool force_tcp, const std::string& grant_scope = "block") {
  UcxSetup s;
  std::vector<std::string> args = {"--rocksdb_path=" + dir.Sub("db"), "--ucx",
                                   "--dram_capacity=512M", "--ucx_grant_scope=" + grant_scope};
  if (force_tcp) args.push_back("--ucx_force_tcp");
  absl::StatusOr<std::unique_ptr<KvStoreProcess>> p = KvStoreProcess::Start(args);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return s;
  s.server = *std::move(p);
  UcxTransportOptions uo;
  uo.force_tcp = force_tcp;
  absl::StatusOr<std::unique_ptr<Transport>> t = NewUcxTransport(uo);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return s;
  s.transport = *std::move(t);
  KvStoreClientOptions o;
  o.addresses = {s.server->address()};
  o.inline_put_bytes = 0;  // Every put goes through the data plane.
  o.initial_backoff = absl::Milliseconds(5);
  o.block_transport = NewUcxBlockTransport(s.transport.get());
  absl::StatusOr<std::unique_ptr<KvStoreClient>> c = KvStoreClient::Create(std::move(o));
  EXPECT_TRUE(c.ok()) << c.status();
  if (c.ok()) s.client = *std::move(c);
  return s;
}

void RoundTrip(KvStoreClient& client, const TestVersion& v) {
  std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());
  absl::StatusOr<v1::Manifest> put = client.Put(v.manifest, blocks);
  ASSERT_TRUE(put.ok()) << put.status();
  absl::StatusOr<v1::Manifest> m = client.Lookup(v.manifest.key());
  ASSERT_TRUE(m.ok()) << m.status();
  // Blocks arrive in order, each verified, while later ones are in flight.
  uint32_t next = 0;
  absl::Status s =
      client.Read(*m, {}, [&](uint32_t index, std::string_view encoded, const DecodedBlock&) {
        EXPECT_EQ(index, next++);
        EXPECT_TRUE(encoded == v.blocks[index]) << "block " << index;
        return absl::OkStatus();
      });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(next, v.blocks.size());
}

void RoundTripsAllSizes(bool force_tcp, const std::string& grant_scope = "block") {
  TempDir dir;
  UcxSetup s = Start(dir, force_tcp, grant_scope);
  ASSERT_NE(s.client, nullptr);
  uint32_t seed = force_tcp ? 100 : 1;
  for (size_t payload : {size_t{1} << 10, size_t{1} << 20, size_t{64} << 20}) {
    SCOPED_TRACE(absl::StrCat("payload ", payload));
    RoundTrip(*s.client,
              MakeVersion(Key("acme", absl::StrCat("ucx-", payload), 1), 1, payload - 64, seed++));
  }
  RoundTrip(*s.client, MakeVersion(Key("acme", "layers", 1), 32, 128 << 10, seed++));
  absl::StatusOr<v1::StatsResponse> stats = s.client->Stats(s.server->address());
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->open_puts(), 0u);
  EXPECT_EQ(s.server->Terminate(), 0);
}

TEST(KvStoreUcxTest, RoundTripsOverSharedMemory) {
  KRUL_REQUIRE_UCX();
  RoundTripsAllSizes(/*force_tcp=*/false);
}

TEST(KvStoreUcxTest, RoundTripsOverTcp) {
  KRUL_REQUIRE_UCX();
  RoundTripsAllSizes(/*force_tcp=*/true);
}

// Whole-chunk grants, cached by the client across requests.
TEST(KvStoreUcxTest, RoundTripsWithChunkGrants) {
  KRUL_REQUIRE_UCX();
  RoundTripsAllSizes(/*force_tcp=*/false, "chunk");
}

// Blocks requested out of order or with gaps arrive in the order asked,
// each intact, whether or not neighbours share a transfer.
TEST(KvStoreUcxTest, ReadsASubsetInTheOrderAsked) {
  KRUL_REQUIRE_UCX();
  TempDir dir;
  UcxSetup s = Start(dir, /*force_tcp=*/false);
  ASSERT_NE(s.client, nullptr);
  TestVersion v = MakeVersion(Key("acme", "subset", 1), 12, 100 << 10, 51);
  std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());
  ASSERT_TRUE(s.client->Put(v.manifest, blocks).ok());
  const std::vector<uint32_t> wanted = {5, 2, 3, 4, 11, 0, 9, 10};
  size_t next = 0;
  absl::Status read = s.client->Read(
      v.manifest, wanted, [&](uint32_t index, std::string_view encoded, const DecodedBlock&) {
        EXPECT_LT(next, wanted.size());
        if (next < wanted.size()) {
          EXPECT_EQ(index, wanted[next]);
        }
        ++next;
        EXPECT_TRUE(encoded == v.blocks[index]) << "block " << index;
        return absl::OkStatus();
      });
  ASSERT_TRUE(read.ok()) << read;
  EXPECT_EQ(next, wanted.size());
  EXPECT_EQ(s.server->Terminate(), 0);
}

// Every Get asks for its own short-lived grant, but the store's memory is
// imported (mapped) once per client-server pair: later Gets map nothing.
TEST(KvStoreUcxTest, LaterGetsReuseTheImportedStoreMemory) {
  KRUL_REQUIRE_UCX();
  TempDir dir;
  UcxSetup s = Start(dir, /*force_tcp=*/false);
  ASSERT_NE(s.client, nullptr);
  TestVersion a = MakeVersion(Key("acme", "reuse-a", 1), 8, 256 << 10, 31);
  TestVersion b = MakeVersion(Key("acme", "reuse-b", 1), 3, 1 << 20, 32);
  for (const TestVersion* v : {&a, &b}) {
    std::vector<std::string_view> blocks(v->blocks.begin(), v->blocks.end());
    ASSERT_TRUE(s.client->Put(v->manifest, blocks).ok());
  }
  absl::StatusOr<v1::Manifest> ma = s.client->Lookup(a.manifest.key());
  absl::StatusOr<v1::Manifest> mb = s.client->Lookup(b.manifest.key());
  ASSERT_TRUE(ma.ok() && mb.ok());
  absl::StatusOr<std::vector<std::string>> data = s.client->ReadAll(*ma);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_TRUE(*data == a.blocks);
  const TransportStats first = s.transport->stats();
  EXPECT_GE(first.regions_imported, 1u);
  for (int i = 0; i < 3; ++i) {
    for (const auto& [m, v] : {std::pair(&*ma, &a), std::pair(&*mb, &b)}) {
      data = s.client->ReadAll(*m);
      ASSERT_TRUE(data.ok()) << data.status();
      EXPECT_TRUE(*data == v->blocks);
    }
  }
  const TransportStats later = s.transport->stats();
  EXPECT_EQ(later.regions_imported, first.regions_imported);
  EXPECT_GE(later.grants_imported, first.grants_imported + 6);  // a grant per Get
  EXPECT_EQ(s.server->Terminate(), 0);
}

// A store grant reaches only the blocks it names and only until it expires,
// even though the client has the store's memory mapped.
TEST(KvStoreUcxTest, GrantsReachOnlyTheirBlocksUntilTheyExpire) {
  KRUL_REQUIRE_UCX();
  TempDir dir;
  UcxSetup s = Start(dir, /*force_tcp=*/false);
  ASSERT_NE(s.client, nullptr);
  TestVersion v = MakeVersion(Key("acme", "limits", 1), 4, 64 << 10, 41);
  std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());
  ASSERT_TRUE(s.client->Put(v.manifest, blocks).ok());
  ASSERT_TRUE(s.client->ReadAll(v.manifest).ok());  // The client has imported the memory.

  v1::KvStore::StubInterface& stub = s.client->StubFor(s.server->address());
  v1::ExchangeEndpointsRequest xreq;
  xreq.add_transports("ucx");
  xreq.set_client_worker_address(s.transport->address());
  v1::ExchangeEndpointsResponse xresp;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub.ExchangeEndpoints(&ctx, xreq, &xresp).ok());
  }
  absl::StatusOr<std::unique_ptr<Endpoint>> ep =
      s.transport->Connect(xresp.server_worker_address());
  ASSERT_TRUE(ep.ok()) << ep.status();
  v1::GrantReadRequest greq;
  *greq.mutable_key() = v.manifest.key();
  greq.add_block_indices(1);
  greq.set_lease_seconds(1);
  v1::GrantReadResponse grant;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub.GrantRead(&ctx, greq, &grant).ok());
  }
  const absl::Time expires = absl::FromUnixMicros(grant.expires_unix_micros());
  ASSERT_EQ(grant.targets_size(), 1);
  const v1::TransferTarget& t = grant.targets(0);
  absl::StatusOr<std::unique_ptr<RemoteRegion>> remote =
      (*ep)->ImportRegion(t.transport_descriptor());
  ASSERT_TRUE(remote.ok()) << remote.status();
  std::vector<uint8_t> buffer(2 * t.size_bytes());
  absl::StatusOr<std::unique_ptr<MemoryRegion>> local =
      s.transport->RegisterRegion(buffer.data(), buffer.size());
  ASSERT_TRUE(local.ok()) << local.status();
  const TransferSegment block{0, t.remote_offset(), t.size_bytes()};
  ASSERT_TRUE(TransferSync(*s.transport, TransferOp::kRead, **local, **remote, std::span(&block, 1),
                           absl::Seconds(30))
                  .ok());
  EXPECT_EQ(std::string_view(reinterpret_cast<const char*>(buffer.data()), t.size_bytes()),
            v.blocks[1]);
  // The neighbouring blocks are in the same mapped memory, not in the grant.
  const TransferSegment beyond{0, t.remote_offset(), t.size_bytes() + 1};
  EXPECT_EQ(
      s.transport->PrepareTransfer(TransferOp::kRead, **local, **remote, std::span(&beyond, 1))
          .status()
          .code(),
      absl::StatusCode::kOutOfRange);
  const TransferSegment next{0, t.remote_offset() + t.size_bytes(), 1};
  EXPECT_EQ(s.transport->PrepareTransfer(TransferOp::kRead, **local, **remote, std::span(&next, 1))
                .status()
                .code(),
            absl::StatusCode::kOutOfRange);
  // Wait for the expiry itself (the transport reads the wall clock).
  while (absl::Now() < expires) absl::SleepFor(expires - absl::Now() + absl::Milliseconds(1));
  EXPECT_EQ(TransferSync(*s.transport, TransferOp::kRead, **local, **remote, std::span(&block, 1),
                         absl::Seconds(30))
                .code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*ep)->ImportRegion(t.transport_descriptor()).status().code(),
            absl::StatusCode::kPermissionDenied);
  remote->reset();
  local->reset();
  ep->reset();
  EXPECT_EQ(s.server->Terminate(), 0);
}

TEST(KvStoreUcxTest, CorruptionInTransitIsDataLoss) {
  KRUL_REQUIRE_UCX();
  TempDir dir;
  UcxSetup s = Start(dir, /*force_tcp=*/false);
  ASSERT_NE(s.client, nullptr);
  TestVersion v = MakeVersion(Key("acme", "c", 1), 4, 256 << 10, 7);
  std::vector<std::string_view> blocks(v.blocks.begin(), v.blocks.end());
  // Every write damaged: the store refuses to commit.
  s.transport->SetTamperHookForTesting(
      [](TransferOp, std::span<uint8_t> bytes) { bytes[bytes.size() / 3] ^= 0x08; });
  EXPECT_EQ(s.client->Put(v.manifest, blocks).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.client->Lookup(v.manifest.key()).status().code(), absl::StatusCode::kNotFound);
  s.transport->SetTamperHookForTesting(nullptr);
  ASSERT_TRUE(s.client->Put(v.manifest, blocks).ok());
  absl::StatusOr<v1::Manifest> m = s.client->Lookup(v.manifest.key());
  ASSERT_TRUE(m.ok());
  // Every block damaged in transit (one transfer may carry several adjacent
  // blocks, so flip a bit every 4 KiB): nothing reaches the caller.
  s.transport->SetTamperHookForTesting([](TransferOp op, std::span<uint8_t> bytes) {
    if (op != TransferOp::kRead) return;
    for (size_t i = 0; i < bytes.size(); i += 4096) bytes[i] ^= 0x01;
  });
  int delivered = 0;
  absl::Status read = s.client->Read(*m, {}, [&](uint32_t, std::string_view, const DecodedBlock&) {
    ++delivered;
    return absl::OkStatus();
  });
  EXPECT_EQ(read.code(), absl::StatusCode::kDataLoss) << read;
  EXPECT_EQ(delivered, 0);
  s.transport->SetTamperHookForTesting(nullptr);
  absl::StatusOr<std::vector<std::string>> data = s.client->ReadAll(*m);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_TRUE(*data == v.blocks);
}

}  // namespace
}  // namespace krul::testing
