// Tests of the Transport interface, run against each implementation: the
// in-process fake and UCX with each protocol (direct copy through shared
// memory, active messages, RMA) over UCX's default wire (shared memory) and
// with TCP forced onto loopback. Server and client are
// two Transport instances in this process; expected bytes come from an
// independent pattern generator and are compared with the server's memory
// directly.
#include "krul/transport/transport.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/transport/transport_test_pattern.h"
#include "gtest/gtest.h"
#include "krul/transport/fake_transport.h"
#include "krul/transport/ucx_transport.h"
#include "transport_internal.h"

namespace krul {
namespace {

using krul::testing::FillPattern;

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * 1024;

std::vector<uint8_t> Pattern(size_t size, uint64_t seed) {
  std::vector<uint8_t> v(size);
  FillPattern(v.data(), size, seed);
  return v;
}

// Index of the first differing byte, or -1.
int64_t FirstMismatch(const uint8_t* a, const uint8_t* b, size_t size) {
  if (std::memcmp(a, b, size) == 0) return -1;
  for (size_t i = 0; i < size; ++i) {
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

enum class Backend {
  kFake,
  kUcxDefault,      // protocol auto over shared memory: direct copies
  kUcxTcp,          // protocol auto over TCP: messages
  kUcxMessagesShm,  // messages over shared memory (rendezvous via cma)
  kUcxRmaShm,       // ucp_get_nbx / ucp_put_nbx over shared memory
  kUcxRmaTcp,       // the same, emulated by UCX over TCP
  kUcxMessagesCma,  // messages over shm without peer failure detection:
                    // rendezvous through cma
};

std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  switch (info.param) {
    case Backend::kFake:
      return "Fake";
    case Backend::kUcxDefault:
      return "UcxDefault";
    case Backend::kUcxTcp:
      return "UcxTcp";
    case Backend::kUcxMessagesShm:
      return "UcxMessagesShm";
    case Backend::kUcxRmaShm:
      return "UcxRmaShm";
    case Backend::kUcxRmaTcp:
      return "UcxRmaTcp";
    case Backend::kUcxMessagesCma:
      return "UcxMessagesCma";
  }
  return "Unknown";
}

// gtest prints parameters in test names and failures.
void PrintTo(Backend backend, std::ostream* os) {
  *os << BackendName(::testing::TestParamInfo<Backend>(backend, 0));
}

bool UsesMessages(Backend backend) {
  return backend == Backend::kUcxTcp || backend == Backend::kUcxMessagesShm ||
         backend == Backend::kUcxMessagesCma;
}

std::unique_ptr<Transport> MakeTransport(Backend backend) {
  if (backend == Backend::kFake) return FakeTransport::Create();
  UcxTransportOptions options;
  options.force_tcp = backend == Backend::kUcxTcp || backend == Backend::kUcxRmaTcp;
  if (backend == Backend::kUcxMessagesShm || backend == Backend::kUcxMessagesCma) {
    options.protocol = UcxTransportOptions::Protocol::kMessages;
  }
  options.detect_peer_failure = backend != Backend::kUcxMessagesCma;
  if (backend == Backend::kUcxRmaShm || backend == Backend::kUcxRmaTcp) {
    options.protocol = UcxTransportOptions::Protocol::kRma;
  }
  absl::StatusOr<std::unique_ptr<Transport>> transport = NewUcxTransport(options);
  EXPECT_TRUE(transport.ok()) << transport.status();
  return transport.ok() ? *std::move(transport) : nullptr;
}

class TransportTest : public ::testing::TestWithParam<Backend> {
 protected:
  // A server region of `server_bytes`, a client region of `client_bytes` and
  // the client's view of the whole server region.
  void SetUpPair(size_t server_bytes, size_t client_bytes) {
    server_ = MakeTransport(GetParam());
    client_ = MakeTransport(GetParam());
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(client_, nullptr);
    auto server_region = server_->AllocateRegion(server_bytes);
    ASSERT_TRUE(server_region.ok()) << server_region.status();
    server_region_ = *std::move(server_region);
    client_buffer_.assign(client_bytes, 0);
    auto client_region = client_->RegisterRegion(client_buffer_.data(), client_bytes);
    ASSERT_TRUE(client_region.ok()) << client_region.status();
    client_region_ = *std::move(client_region);
    auto endpoint = client_->Connect(server_->address());
    ASSERT_TRUE(endpoint.ok()) << endpoint.status();
    endpoint_ = *std::move(endpoint);
    remote_ = Import(0, server_bytes);
    ASSERT_NE(remote_, nullptr);
  }

  std::unique_ptr<RemoteRegion> Import(uint64_t offset, uint64_t length,
                                       absl::Time expires = absl::InfiniteFuture()) {
    auto descriptor = server_region_->Describe(offset, length, expires);
    EXPECT_TRUE(descriptor.ok()) << descriptor.status();
    if (!descriptor.ok()) return nullptr;
    auto remote = endpoint_->ImportRegion(*descriptor);
    EXPECT_TRUE(remote.ok()) << remote.status();
    return remote.ok() ? *std::move(remote) : nullptr;
  }

  absl::Status Move(TransferOp op, std::vector<TransferSegment> segments,
                    RemoteRegion* remote = nullptr) {
    return TransferSync(*client_, op, *client_region_, remote ? *remote : *remote_, segments,
                        absl::Seconds(30));
  }

  void TearDown() override {
    // Handles before their transports, in dependency order.
    remote_.reset();
    endpoint_.reset();
    client_region_.reset();
    server_region_.reset();
    client_.reset();
    server_.reset();
  }

  std::unique_ptr<Transport> server_;
  std::unique_ptr<Transport> client_;
  std::unique_ptr<MemoryRegion> server_region_;
  std::vector<uint8_t> client_buffer_;
  std::unique_ptr<MemoryRegion> client_region_;
  std::unique_ptr<Endpoint> endpoint_;
  std::unique_ptr<RemoteRegion> remote_;
};

TEST_P(TransportTest, WriteThenReadRoundTripsEverySize) {
  constexpr size_t kMax = 64 * kMiB;
  ASSERT_NO_FATAL_FAILURE(SetUpPair(kMax, kMax));
  const std::vector<uint8_t> source = Pattern(kMax, 7);
  for (size_t size : {kKiB, 64 * kKiB, kMiB, 16 * kMiB, 64 * kMiB}) {
    SCOPED_TRACE(::testing::Message() << "size=" << size);
    std::memcpy(client_buffer_.data(), source.data(), size);
    ASSERT_TRUE(Move(TransferOp::kWrite, {{0, 0, size}}).ok());
    // The write is remotely complete: the server's memory holds the bytes.
    EXPECT_EQ(FirstMismatch(server_region_->data(), source.data(), size), -1);

    std::memset(client_buffer_.data(), 0, size);
    FillPattern(server_region_->data(), size, size);  // fresh server bytes
    ASSERT_TRUE(Move(TransferOp::kRead, {{0, 0, size}}).ok());
    const std::vector<uint8_t> expected = Pattern(size, size);
    EXPECT_EQ(FirstMismatch(client_buffer_.data(), expected.data(), size), -1);
  }
}

TEST_P(TransportTest, SegmentsAndSubGrantsLandAtTheirOffsets) {
  ASSERT_NO_FATAL_FAILURE(SetUpPair(256 * kKiB, 64 * kKiB));
  // A grant for [100000, 100000 + 20000): remote offset 0 is server byte 100000.
  std::unique_ptr<RemoteRegion> grant = Import(100000, 20000);
  ASSERT_NE(grant, nullptr);
  EXPECT_EQ(grant->size(), 20000u);
  FillPattern(client_buffer_.data(), client_buffer_.size(), 3);
  const std::vector<uint8_t> client_copy = client_buffer_;
  ASSERT_TRUE(
      Move(TransferOp::kWrite, {{5, 0, 1000}, {9000, 19000, 1000}, {30000, 7000, 333}}, grant.get())
          .ok());
  std::vector<uint8_t> expected(256 * kKiB, 0);
  std::memcpy(&expected[100000], &client_copy[5], 1000);
  std::memcpy(&expected[100000 + 19000], &client_copy[9000], 1000);
  std::memcpy(&expected[100000 + 7000], &client_copy[30000], 333);
  EXPECT_EQ(FirstMismatch(server_region_->data(), expected.data(), expected.size()), -1);

  std::memset(client_buffer_.data(), 0, client_buffer_.size());
  ASSERT_TRUE(Move(TransferOp::kRead, {{64 * kKiB - 1000, 19000, 1000}}, grant.get()).ok());
  EXPECT_EQ(FirstMismatch(&client_buffer_[64 * kKiB - 1000], &client_copy[9000], 1000), -1);
  EXPECT_EQ(client_buffer_[64 * kKiB - 1001], 0);
}

// Per-request grants of one region reuse the endpoint's import of the region
// (UCX: one remote key unpack / shared-memory mapping per client-server
// pair), while each grant's own range and expiry are still enforced.
TEST_P(TransportTest, GrantsOfOneRegionShareOneImportButKeepTheirLimits) {
  if (GetParam() == Backend::kFake) GTEST_SKIP() << "the fake keeps no import counters";
  ASSERT_NO_FATAL_FAILURE(SetUpPair(256 * kKiB, 64 * kKiB));
  EXPECT_EQ(client_->stats().grants_imported, 1u);
  EXPECT_EQ(client_->stats().regions_imported, 1u);
  FillPattern(server_region_->data(), 256 * kKiB, 11);
  const std::vector<uint8_t> server_bytes = Pattern(256 * kKiB, 11);

  // Request after request, each with its own short-lived grant.
  for (uint64_t offset : {0u, 64u * 1024u, 100000u, 192u * 1024u}) {
    SCOPED_TRACE(::testing::Message() << "offset=" << offset);
    std::unique_ptr<RemoteRegion> grant = Import(offset, 16 * kKiB, absl::Now() + absl::Minutes(1));
    ASSERT_NE(grant, nullptr);
    std::memset(client_buffer_.data(), 0, client_buffer_.size());
    ASSERT_TRUE(Move(TransferOp::kRead, {{0, 0, 16 * kKiB}}, grant.get()).ok());
    EXPECT_EQ(FirstMismatch(client_buffer_.data(), &server_bytes[offset], 16 * kKiB), -1);
    // The grant reaches only its own 16 KiB, although the region is imported.
    EXPECT_EQ(Move(TransferOp::kRead, {{0, 0, 16 * kKiB + 1}}, grant.get()).code(),
              absl::StatusCode::kOutOfRange);
    EXPECT_EQ(Move(TransferOp::kRead, {{0, 16 * kKiB, 1}}, grant.get()).code(),
              absl::StatusCode::kOutOfRange);
  }
  EXPECT_EQ(client_->stats().grants_imported, 5u);
  EXPECT_EQ(client_->stats().regions_imported, 1u);

  // An expired grant of the imported region is refused as before.
  auto expired = server_region_->Describe(0, 4096, absl::Now() - absl::Seconds(1));
  ASSERT_TRUE(expired.ok());
  EXPECT_EQ(endpoint_->ImportRegion(*expired).status().code(), absl::StatusCode::kPermissionDenied);

  // Another region is imported anew, and so is the same region through a
  // second endpoint (the import belongs to one client-server pair).
  auto other = server_->AllocateRegion(64 * kKiB);
  ASSERT_TRUE(other.ok()) << other.status();
  auto other_grant = endpoint_->ImportRegion(*(*other)->Describe(0, 4096));
  ASSERT_TRUE(other_grant.ok()) << other_grant.status();
  EXPECT_EQ(client_->stats().regions_imported, 2u);
  auto second_endpoint = client_->Connect(server_->address());
  ASSERT_TRUE(second_endpoint.ok()) << second_endpoint.status();
  auto again = (*second_endpoint)->ImportRegion(*server_region_->Describe(0, 4096));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(client_->stats().regions_imported, 3u);
  ASSERT_TRUE(Move(TransferOp::kRead, {{0, 0, 4096}}, again->get()).ok());
  EXPECT_EQ(FirstMismatch(client_buffer_.data(), server_bytes.data(), 4096), -1);
  EXPECT_EQ(server_->stats().grants_imported, 0u);  // counters are per importing side
}

// A read's observer sees every landed byte once, in order per segment, in
// pieces of at most the requested size, after the tamper hook.
TEST_P(TransportTest, LandingObserverSeesEveryPieceInOrderAfterTheHook) {
  constexpr size_t kServer = kMiB + 100;
  ASSERT_NO_FATAL_FAILURE(SetUpPair(kServer, kMiB));
  FillPattern(server_region_->data(), kServer, 21);
  const std::vector<uint8_t> server_bytes = Pattern(kServer, 21);
  const std::vector<TransferSegment> segments = {{0, 0, 300000}, {400000, 500001, 123457}};
  auto transfer = client_->PrepareTransfer(TransferOp::kRead, *client_region_, *remote_, segments);
  ASSERT_TRUE(transfer.ok()) << transfer.status();

  struct Seen {
    uint64_t next = 0;  // expected offset of the next piece
    std::vector<uint8_t> bytes;
  };
  std::vector<Seen> seen(segments.size());
  bool too_big = false;
  ASSERT_TRUE((*transfer)
                  ->ObserveLanding(
                      [&](size_t segment, uint64_t offset, std::span<const uint8_t> piece) {
                        ASSERT_LT(segment, seen.size());
                        EXPECT_EQ(offset, seen[segment].next) << "segment " << segment;
                        too_big |= piece.size() > 64 * kKiB || piece.empty();
                        seen[segment].next = offset + piece.size();
                        seen[segment].bytes.insert(seen[segment].bytes.end(), piece.begin(),
                                                   piece.end());
                      },
                      64 * kKiB)
                  .ok());
  for (int round = 0; round < 2; ++round) {  // every Post shows the pieces again
    SCOPED_TRACE(::testing::Message() << "round " << round);
    for (Seen& s : seen) s = Seen{};
    ASSERT_TRUE((*transfer)->Post().ok());
    if (GetParam() == Backend::kUcxDefault) {
      // Over shared memory Post copies, and shows each piece as it goes.
      EXPECT_EQ(seen[1].bytes.size(), segments[1].length_bytes);
    }
    ASSERT_TRUE((*transfer)->Wait(absl::Seconds(30)).ok());
    EXPECT_FALSE(too_big);
    for (size_t i = 0; i < segments.size(); ++i) {
      ASSERT_EQ(seen[i].bytes.size(), segments[i].length_bytes) << "segment " << i;
      EXPECT_EQ(FirstMismatch(seen[i].bytes.data(), &server_bytes[segments[i].remote_offset],
                              segments[i].length_bytes),
                -1)
          << "segment " << i;
    }
  }

  // With a tamper hook the observer sees the corrupted bytes, as landed.
  client_->SetTamperHookForTesting([](TransferOp, std::span<uint8_t> bytes) { bytes[7] ^= 0x40; });
  for (Seen& s : seen) s = Seen{};
  ASSERT_TRUE((*transfer)->Post().ok());
  ASSERT_TRUE((*transfer)->Wait(absl::Seconds(30)).ok());
  client_->SetTamperHookForTesting(nullptr);
  for (size_t i = 0; i < segments.size(); ++i) {
    ASSERT_EQ(seen[i].bytes.size(), segments[i].length_bytes);
    EXPECT_EQ(seen[i].bytes[7], server_bytes[segments[i].remote_offset + 7] ^ 0x40);
    EXPECT_EQ(seen[i].bytes[7], client_buffer_[segments[i].local_offset + 7]);
  }

  EXPECT_EQ((*transfer)->ObserveLanding(nullptr, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*transfer)->ObserveLanding(nullptr, 1).ok());
  const TransferSegment one{0, 0, 4096};
  auto write =
      client_->PrepareTransfer(TransferOp::kWrite, *client_region_, *remote_, std::span(&one, 1));
  ASSERT_TRUE(write.ok());
  EXPECT_EQ(
      (*write)->ObserveLanding([](size_t, uint64_t, std::span<const uint8_t>) {}, 4096).code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_P(TransportTest, PipelinedLayersPostedTogetherCompleteInOrder) {
  constexpr int kLayers = 32;
  constexpr size_t kBlock = 256 * kKiB;
  ASSERT_NO_FATAL_FAILURE(SetUpPair(kLayers * kBlock, kLayers * kBlock));
  for (int l = 0; l < kLayers; ++l) FillPattern(server_region_->data() + l * kBlock, kBlock, l);
  std::vector<std::unique_ptr<Transfer>> layers;
  for (int l = 0; l < kLayers; ++l) {
    const TransferSegment segment{l * kBlock, l * kBlock, kBlock};
    auto transfer = client_->PrepareTransfer(TransferOp::kRead, *client_region_, *remote_,
                                             std::span(&segment, 1));
    ASSERT_TRUE(transfer.ok()) << transfer.status();
    EXPECT_EQ((*transfer)->state(), TransferState::kPrepared);
    EXPECT_EQ((*transfer)->total_bytes(), kBlock);
    layers.push_back(*std::move(transfer));
  }
  for (auto& t : layers) ASSERT_TRUE(t->Post().ok());
  for (int l = 0; l < kLayers; ++l) {
    ASSERT_TRUE(layers[l]->Wait(absl::Seconds(30)).ok()) << "layer " << l;
    EXPECT_EQ(layers[l]->state(), TransferState::kDone);
    // Layer l is usable now, whatever the state of the later layers.
    const std::vector<uint8_t> expected = Pattern(kBlock, l);
    ASSERT_EQ(FirstMismatch(&client_buffer_[l * kBlock], expected.data(), kBlock), -1)
        << "layer " << l;
  }
}

TEST_P(TransportTest, ManyThreadsTransferConcurrently) {
  constexpr int kThreads = 4;
  constexpr size_t kBlock = 128 * kKiB;
  ASSERT_NO_FATAL_FAILURE(SetUpPair(kThreads * kBlock, kThreads * kBlock));
  FillPattern(client_buffer_.data(), client_buffer_.size(), 11);
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 10 && results[t].ok(); ++round) {
        results[t] = Move(TransferOp::kWrite, {{t * kBlock, t * kBlock, kBlock}});
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_TRUE(results[t].ok()) << results[t];
  EXPECT_EQ(FirstMismatch(server_region_->data(), client_buffer_.data(), client_buffer_.size()),
            -1);
}

TEST_P(TransportTest, TransferLifecycleAndRepost) {
  ASSERT_NO_FATAL_FAILURE(SetUpPair(64 * kKiB, 64 * kKiB));
  const TransferSegment segment{0, 0, 64 * kKiB};
  auto transfer = client_->PrepareTransfer(TransferOp::kRead, *client_region_, *remote_,
                                           std::span(&segment, 1));
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  Transfer& t = **transfer;
  EXPECT_EQ(t.op(), TransferOp::kRead);
  EXPECT_EQ(t.Wait(absl::Seconds(1)).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnknown);
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    FillPattern(server_region_->data(), 64 * kKiB, seed);
    ASSERT_TRUE(t.Post().ok());
    EXPECT_EQ(t.state(), TransferState::kInFlight);
    EXPECT_EQ(t.Post().code(), absl::StatusCode::kFailedPrecondition);
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (t.Poll() == TransferState::kInFlight && absl::Now() < deadline) {
    }
    ASSERT_EQ(t.state(), TransferState::kDone) << t.status();
    EXPECT_TRUE(t.status().ok());
    const std::vector<uint8_t> expected = Pattern(64 * kKiB, seed);
    EXPECT_EQ(FirstMismatch(client_buffer_.data(), expected.data(), 64 * kKiB), -1);
  }
}

TEST_P(TransportTest, BadSegmentsAreRejectedBeforeAnyByteMoves) {
  ASSERT_NO_FATAL_FAILURE(SetUpPair(64 * kKiB, 16 * kKiB));
  std::unique_ptr<RemoteRegion> grant = Import(4096, 8192);
  ASSERT_NE(grant, nullptr);
  auto prepare = [&](std::vector<TransferSegment> segments) {
    return client_->PrepareTransfer(TransferOp::kWrite, *client_region_, *grant, segments)
        .status()
        .code();
  };
  using absl::StatusCode;
  EXPECT_EQ(prepare({}), StatusCode::kInvalidArgument);
  EXPECT_EQ(prepare({{0, 0, 0}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(prepare({{0, 0, 8192}}), StatusCode::kOk);
  EXPECT_EQ(prepare({{0, 1, 8192}}), StatusCode::kOutOfRange);             // past the grant
  EXPECT_EQ(prepare({{0, 8192, 1}}), StatusCode::kOutOfRange);             // starts at its end
  EXPECT_EQ(prepare({{16 * kKiB - 10, 0, 11}}), StatusCode::kOutOfRange);  // past local
  EXPECT_EQ(prepare({{0, ~0ull - 10, 20}}), StatusCode::kOutOfRange);      // wraps around
  EXPECT_EQ(prepare({{~0ull, 0, 2}}), StatusCode::kOutOfRange);
  EXPECT_EQ(prepare({{0, 0, 100}, {0, 8100, 100}}), StatusCode::kOutOfRange);
  // Nothing reached the server.
  const std::vector<uint8_t> zeros(64 * kKiB, 0);
  EXPECT_EQ(FirstMismatch(server_region_->data(), zeros.data(), zeros.size()), -1);

  EXPECT_EQ(server_region_->Describe(0, 64 * kKiB + 1).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(server_region_->Describe(64 * kKiB, 1).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(server_region_->Describe(0, 0).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(server_region_->Describe(~0ull, 2).status().code(), StatusCode::kOutOfRange);
}

TEST_P(TransportTest, MangledDescriptorsAndAddressesAreInvalidArguments) {
  ASSERT_NO_FATAL_FAILURE(SetUpPair(64 * kKiB, 4 * kKiB));
  auto descriptor = server_region_->Describe(0, 4096);
  ASSERT_TRUE(descriptor.ok());
  // Every single-byte corruption and every truncation is caught.
  for (size_t i = 0; i < descriptor->size(); ++i) {
    std::string bad = *descriptor;
    bad[i] ^= 0x40;
    EXPECT_EQ(endpoint_->ImportRegion(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << "byte " << i;
  }
  for (size_t n = 0; n < descriptor->size(); n += 3) {
    EXPECT_EQ(endpoint_->ImportRegion(descriptor->substr(0, n)).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(endpoint_->ImportRegion(*descriptor + "x").status().code(),
            absl::StatusCode::kInvalidArgument);

  // A grant issued by a third transport is not valid on this endpoint.
  std::unique_ptr<Transport> other = MakeTransport(GetParam());
  auto other_region = other->AllocateRegion(4096);
  ASSERT_TRUE(other_region.ok());
  EXPECT_EQ(endpoint_->ImportRegion(*(*other_region)->Describe(0, 4096)).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Nor is one of another transport kind.
  std::unique_ptr<Transport> alien = GetParam() == Backend::kFake
                                         ? MakeTransport(Backend::kUcxDefault)
                                         : MakeTransport(Backend::kFake);
  auto alien_region = alien->AllocateRegion(4096);
  ASSERT_TRUE(alien_region.ok());
  EXPECT_EQ(endpoint_->ImportRegion(*(*alien_region)->Describe(0, 4096)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Connect(alien->address()).status().code(), absl::StatusCode::kInvalidArgument);

  std::string address = server_->address();
  EXPECT_EQ(client_->Connect("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client_->Connect(address.substr(0, address.size() / 2)).status().code(),
            absl::StatusCode::kInvalidArgument);
  address[address.size() / 2] ^= 1;
  EXPECT_EQ(client_->Connect(address).status().code(), absl::StatusCode::kInvalidArgument);

  // Regions and grants from the wrong side are refused at Prepare.
  const TransferSegment segment{0, 0, 16};
  auto other_remote = endpoint_->ImportRegion(*descriptor);
  ASSERT_TRUE(other_remote.ok());
  EXPECT_EQ(client_
                ->PrepareTransfer(TransferOp::kRead, *server_region_, **other_remote,
                                  std::span(&segment, 1))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(other
                ->PrepareTransfer(TransferOp::kRead, **other_region, **other_remote,
                                  std::span(&segment, 1))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(TransportTest, ExpiredGrantsArePermissionDenied) {
  ASSERT_NO_FATAL_FAILURE(SetUpPair(64 * kKiB, 4 * kKiB));
  auto expired = server_region_->Describe(0, 4096, absl::Now() - absl::Seconds(1));
  ASSERT_TRUE(expired.ok());
  EXPECT_EQ(endpoint_->ImportRegion(*expired).status().code(), absl::StatusCode::kPermissionDenied);

  // Long enough for one transfer on a loaded CI machine, short enough to
  // wait out below.
  const absl::Time expires = absl::Now() + absl::Seconds(1);
  std::unique_ptr<RemoteRegion> short_lived = Import(0, 4096, expires);
  ASSERT_NE(short_lived, nullptr);
  const TransferSegment segment{0, 0, 4096};
  auto transfer = client_->PrepareTransfer(TransferOp::kRead, *client_region_, *short_lived,
                                           std::span(&segment, 1));
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  ASSERT_TRUE((*transfer)->Post().ok());
  ASSERT_TRUE((*transfer)->Wait(absl::Seconds(30)).ok());
  // Expiry is the thing under test and the transports read the wall clock
  // (absl::Now, no injectable clock), so wait until it has passed the grant's
  // expiry: a wait on the condition itself, not a guessed margin.
  while (absl::Now() < expires) absl::SleepFor(expires - absl::Now() + absl::Milliseconds(1));
  EXPECT_EQ((*transfer)->Post().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(client_
                ->PrepareTransfer(TransferOp::kRead, *client_region_, *short_lived,
                                  std::span(&segment, 1))
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_P(TransportTest, TamperHookCorruptsBytesInTransitOnly) {
  ASSERT_NO_FATAL_FAILURE(SetUpPair(64 * kKiB, 64 * kKiB));
  int calls = 0;
  client_->SetTamperHookForTesting([&](TransferOp, std::span<uint8_t> bytes) {
    ++calls;
    bytes[bytes.size() / 2] ^= 0x01;
  });
  FillPattern(server_region_->data(), 64 * kKiB, 21);
  const std::vector<uint8_t> stored = Pattern(64 * kKiB, 21);
  ASSERT_TRUE(Move(TransferOp::kRead, {{0, 0, 64 * kKiB}}).ok());
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(FirstMismatch(client_buffer_.data(), stored.data(), 64 * kKiB), 32 * kKiB);
  EXPECT_EQ(FirstMismatch(client_buffer_.data() + 32 * kKiB + 1, stored.data() + 32 * kKiB + 1,
                          32 * kKiB - 1),
            -1);
  // The server's copy is intact.
  EXPECT_EQ(FirstMismatch(server_region_->data(), stored.data(), 64 * kKiB), -1);

  FillPattern(client_buffer_.data(), 64 * kKiB, 22);
  const std::vector<uint8_t> sent = Pattern(64 * kKiB, 22);
  ASSERT_TRUE(Move(TransferOp::kWrite, {{0, 0, 1000}, {1000, 1000, 1000}}).ok());
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(FirstMismatch(server_region_->data(), sent.data(), 2000), 500);
  EXPECT_EQ(server_region_->data()[1500], sent[1500] ^ 0x01);
  // The caller's buffer is not touched.
  EXPECT_EQ(FirstMismatch(client_buffer_.data(), sent.data(), 64 * kKiB), -1);

  client_->SetTamperHookForTesting(nullptr);
  ASSERT_TRUE(Move(TransferOp::kWrite, {{0, 0, 2000}}).ok());
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(FirstMismatch(server_region_->data(), sent.data(), 2000), -1);
}

TEST_P(TransportTest, RegionsAreReleasedAndRegisteredAgain) {
  ASSERT_NO_FATAL_FAILURE(SetUpPair(4 * kKiB, 4 * kKiB));
  // Register and release many regions; a leak of registrations or remote
  // keys would exhaust resources or crash at teardown.
  std::vector<uint8_t> buffer(kMiB);
  for (int i = 0; i < 200; ++i) {
    auto region = server_->RegisterRegion(buffer.data(), buffer.size());
    ASSERT_TRUE(region.ok()) << region.status();
    auto allocated = server_->AllocateRegion(64 * kKiB);
    ASSERT_TRUE(allocated.ok()) << allocated.status();
    EXPECT_EQ((*allocated)->data()[64 * kKiB - 1], 0);  // zeroed
    auto descriptor = (*allocated)->Describe(0, 64 * kKiB);
    ASSERT_TRUE(descriptor.ok());
    auto remote = endpoint_->ImportRegion(*descriptor);
    ASSERT_TRUE(remote.ok()) << remote.status();
    if (i % 50 == 0) {
      ASSERT_TRUE(Move(TransferOp::kRead, {{0, 0, 4 * kKiB}}, remote->get()).ok());
    }
  }
  EXPECT_EQ(server_->RegisterRegion(nullptr, 10).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server_->RegisterRegion(buffer.data(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server_->AllocateRegion(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(server_->RegisterRegion(buffer.data(), 16, MemoryKind::kCuda).status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST_P(TransportTest, HandlesMayOutliveTheirTransports) {
  ASSERT_NO_FATAL_FAILURE(SetUpPair(64 * kKiB, 64 * kKiB));
  FillPattern(server_region_->data(), 64 * kKiB, 5);
  const TransferSegment segment{0, 0, 64 * kKiB};
  auto transfer = client_->PrepareTransfer(TransferOp::kRead, *client_region_, *remote_,
                                           std::span(&segment, 1));
  ASSERT_TRUE(transfer.ok()) << transfer.status();
  // The client Transport object goes first; its handles keep working (the
  // waiting thread makes progress itself).
  client_.reset();
  ASSERT_TRUE((*transfer)->Post().ok());
  ASSERT_TRUE((*transfer)->Wait(absl::Seconds(30)).ok());
  const std::vector<uint8_t> expected = Pattern(64 * kKiB, 5);
  EXPECT_EQ(FirstMismatch(client_buffer_.data(), expected.data(), 64 * kKiB), -1);
  EXPECT_TRUE(endpoint_->ImportRegion(*server_region_->Describe(0, 10)).ok());
}

TEST_P(TransportTest, ServerSideChecksRevocationAndForgedRanges) {
  if (GetParam() != Backend::kFake && !UsesMessages(GetParam())) {
    GTEST_SKIP() << "one-sided protocols cannot check on the server side";
  }
  ASSERT_NO_FATAL_FAILURE(SetUpPair(64 * kKiB, 64 * kKiB));
  // A client that bypasses its own checks: the grant claims more bytes than
  // the server region has.
  auto descriptor = server_region_->Describe(60 * kKiB, 4 * kKiB);
  ASSERT_TRUE(descriptor.ok());
  const auto kind = GetParam() == Backend::kFake ? transport_internal::WireKind::kFake
                                                 : transport_internal::WireKind::kUcx;
  auto grant = transport_internal::DecodeGrant(kind, *descriptor);
  ASSERT_TRUE(grant.ok()) << grant.status();
  grant->length = 64 * kKiB;
  auto forged = endpoint_->ImportRegion(transport_internal::EncodeGrant(kind, *grant));
  ASSERT_TRUE(forged.ok()) << forged.status();
  absl::Status forged_status = Move(TransferOp::kWrite, {{0, 0, 64 * kKiB}}, forged->get());
  EXPECT_EQ(forged_status.code(), absl::StatusCode::kOutOfRange) << forged_status;
  // Nothing beyond the region was written: the region's own bytes (first
  // 60 KiB) are untouched as well.
  const std::vector<uint8_t> zeros(64 * kKiB, 0);
  EXPECT_EQ(FirstMismatch(server_region_->data(), zeros.data(), 60 * kKiB), -1);
  // A legitimate transfer still works.
  EXPECT_TRUE(Move(TransferOp::kRead, {{0, 0, 4 * kKiB}}).ok());

  // The server destroys the region: the grant is revoked.
  server_region_.reset();
  EXPECT_EQ(Move(TransferOp::kRead, {{0, 0, 4 * kKiB}}).code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Move(TransferOp::kWrite, {{0, 0, 64 * kKiB}}).code(), absl::StatusCode::kAborted);
}

INSTANTIATE_TEST_SUITE_P(Backends, TransportTest,
                         ::testing::Values(Backend::kFake, Backend::kUcxDefault, Backend::kUcxTcp,
                                           Backend::kUcxMessagesShm, Backend::kUcxRmaShm,
                                           Backend::kUcxRmaTcp, Backend::kUcxMessagesCma),
                         BackendName);

// ----------------------------------------------------------------- UCX only

// One 4 KiB transfer between two UCX transports made with `options`, then
// the client endpoint's DebugString (the UCX lanes it used).
absl::StatusOr<std::string> LanesOfOneTransfer(const UcxTransportOptions& options, TransferOp op) {
  auto server = NewUcxTransport(options);
  if (!server.ok()) return server.status();
  auto client = NewUcxTransport(options);
  if (!client.ok()) return client.status();
  auto region = (*server)->AllocateRegion(4096);
  if (!region.ok()) return region.status();
  std::vector<uint8_t> buffer(4096);
  auto local = (*client)->RegisterRegion(buffer.data(), buffer.size());
  if (!local.ok()) return local.status();
  auto endpoint = (*client)->Connect((*server)->address());
  if (!endpoint.ok()) return endpoint.status();
  auto descriptor = (*region)->Describe(0, 4096);
  if (!descriptor.ok()) return descriptor.status();
  auto remote = (*endpoint)->ImportRegion(*descriptor);
  if (!remote.ok()) return remote.status();
  const TransferSegment segment{0, 0, 4096};
  if (absl::Status s =
          TransferSync(**client, op, **local, **remote, std::span(&segment, 1), absl::Seconds(30));
      !s.ok()) {
    return s;
  }
  return (*endpoint)->DebugString();
}

TEST(UcxTransportTest, ForceTcpReallyUsesTcpUnlessTheEnvironmentSaysOtherwise) {
  if (std::getenv("UCX_TLS") != nullptr || std::getenv("UCX_NET_DEVICES") != nullptr) {
    GTEST_SKIP() << "UCX_TLS / UCX_NET_DEVICES set in the environment; they take precedence";
  }
  for (bool tcp : {true, false}) {
    UcxTransportOptions options;
    options.force_tcp = tcp;
    auto lanes = LanesOfOneTransfer(options, TransferOp::kRead);
    ASSERT_TRUE(lanes.ok()) << lanes.status();
    const std::string& info = *lanes;
    if (tcp) {
      EXPECT_NE(info.find("tcp/lo"), std::string::npos) << info;
      EXPECT_EQ(info.find("posix/"), std::string::npos) << info;
      EXPECT_EQ(info.find("cma/"), std::string::npos) << info;
    } else {
      EXPECT_EQ(info.find("tcp/"), std::string::npos) << info;
    }
  }
}

TEST(UcxTransportTest, TheUsersEnvironmentWinsOverOptions) {
  if (std::getenv("UCX_TLS") != nullptr) GTEST_SKIP() << "UCX_TLS is set already";
  // As an operator would: shared memory only, although the code asks for TCP.
  setenv("UCX_TLS", "sysv,posix,cma,self", 1);
  struct Unset {
    ~Unset() { unsetenv("UCX_TLS"); }
  } unset;
  UcxTransportOptions options;
  options.force_tcp = true;
  auto lanes = LanesOfOneTransfer(options, TransferOp::kWrite);
  ASSERT_TRUE(lanes.ok()) << lanes.status();
  const std::string& info = *lanes;
  EXPECT_EQ(info.find("tcp/"), std::string::npos) << info;
  EXPECT_TRUE(info.find("sysv/") != std::string::npos || info.find("posix/") != std::string::npos)
      << info;
}

TEST(UcxTransportTest, WithoutPeerFailureDetectionRendezvousUsesCma) {
  if (std::getenv("UCX_TLS") != nullptr) GTEST_SKIP() << "UCX_TLS is set in the environment";
  UcxTransportOptions options;
  options.detect_peer_failure = false;
  options.protocol = UcxTransportOptions::Protocol::kMessages;
  auto server = NewUcxTransport(options);
  auto client = NewUcxTransport(options);
  ASSERT_TRUE(server.ok() && client.ok());
  std::vector<uint8_t> served(kMiB), buffer(kMiB);
  FillPattern(served.data(), kMiB, 8);
  auto region = (*server)->RegisterRegion(served.data(), kMiB);
  auto local = (*client)->RegisterRegion(buffer.data(), kMiB);
  auto endpoint = (*client)->Connect((*server)->address());
  ASSERT_TRUE(region.ok() && local.ok() && endpoint.ok());
  auto remote = (*endpoint)->ImportRegion(*(*region)->Describe(0, kMiB));
  ASSERT_TRUE(remote.ok());
  const TransferSegment segment{0, 0, kMiB};
  ASSERT_TRUE(TransferSync(**client, TransferOp::kRead, **local, **remote, std::span(&segment, 1),
                           absl::Seconds(30))
                  .ok());
  EXPECT_EQ(FirstMismatch(buffer.data(), served.data(), kMiB), -1);
  const std::string info = (*endpoint)->DebugString();
  EXPECT_NE(info.find("cma/"), std::string::npos) << info;
}

TEST(UcxTransportTest, OptionsAreValidated) {
  UcxTransportOptions options;
  options.max_op_bytes = 0;
  EXPECT_EQ(NewUcxTransport(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = {};
  options.force_tcp = true;
  options.tcp_device = "";
  EXPECT_EQ(NewUcxTransport(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = {};
  options.ucx_settings = {{"UCX_TLS", "tcp"}};
  EXPECT_EQ(NewUcxTransport(options).status().code(), absl::StatusCode::kInvalidArgument);
  if (std::getenv("UCX_RNDV_THRESH") == nullptr) {
    options.ucx_settings = {{"RNDV_THRESH", "not-a-size"}};
    EXPECT_EQ(NewUcxTransport(options).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(UcxTransportTest, SmallOpSizeSplitsLargeSegments) {
  UcxTransportOptions options;
  options.max_op_bytes = 3000;  // not a divisor of anything below
  auto server = NewUcxTransport(options);
  auto client = NewUcxTransport(options);
  ASSERT_TRUE(server.ok() && client.ok());
  auto region = (*server)->AllocateRegion(kMiB);
  ASSERT_TRUE(region.ok());
  FillPattern((*region)->data(), kMiB, 99);
  std::vector<uint8_t> buffer(kMiB);
  auto local = (*client)->RegisterRegion(buffer.data(), buffer.size());
  auto endpoint = (*client)->Connect((*server)->address());
  ASSERT_TRUE(local.ok() && endpoint.ok());
  auto remote = (*endpoint)->ImportRegion(*(*region)->Describe(0, kMiB));
  ASSERT_TRUE(remote.ok());
  const TransferSegment segment{0, 0, kMiB};
  ASSERT_TRUE(TransferSync(**client, TransferOp::kRead, **local, **remote, std::span(&segment, 1),
                           absl::Seconds(30))
                  .ok());
  const std::vector<uint8_t> expected = Pattern(kMiB, 99);
  EXPECT_EQ(FirstMismatch(buffer.data(), expected.data(), kMiB), -1);
}

// ---------------------------------------------------------------- fake only

class FakeTransportTest : public TransportTest {};

TEST_F(FakeTransportTest, ScriptedFailuresRevocationAndCounters) {
  auto server = FakeTransport::Create();
  auto client = FakeTransport::Create();
  auto region = server->AllocateRegion(8192);
  ASSERT_TRUE(region.ok());
  std::vector<uint8_t> buffer(8192);
  auto local = client->RegisterRegion(buffer.data(), buffer.size());
  auto endpoint = client->Connect(server->address());
  ASSERT_TRUE(local.ok() && endpoint.ok());
  auto remote = (*endpoint)->ImportRegion(*(*region)->Describe(0, 8192));
  ASSERT_TRUE(remote.ok());
  const TransferSegment segment{0, 0, 4096};
  auto run = [&](TransferOp op) {
    return TransferSync(*client, op, **local, **remote, std::span(&segment, 1)).code();
  };
  EXPECT_EQ(run(TransferOp::kRead), absl::StatusCode::kOk);
  EXPECT_EQ(run(TransferOp::kWrite), absl::StatusCode::kOk);
  EXPECT_EQ(client->bytes_read(), 4096u);
  EXPECT_EQ(client->bytes_written(), 4096u);

  client->FailNextTransfers(2, absl::UnavailableError("injected"));
  EXPECT_EQ(run(TransferOp::kRead), absl::StatusCode::kUnavailable);
  EXPECT_EQ(run(TransferOp::kWrite), absl::StatusCode::kUnavailable);
  EXPECT_EQ(run(TransferOp::kRead), absl::StatusCode::kOk);
  EXPECT_EQ(client->bytes_read(), 8192u);

  server->SetUnreachable(true);
  EXPECT_EQ(run(TransferOp::kRead), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*endpoint)->status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->Connect(server->address()).status().code(), absl::StatusCode::kUnavailable);
  server->SetUnreachable(false);
  EXPECT_EQ(run(TransferOp::kRead), absl::StatusCode::kOk);

  // The server revokes the grant: the next transfer is ABORTED, not a
  // use-after-free.
  region->reset();
  EXPECT_EQ(run(TransferOp::kWrite), absl::StatusCode::kAborted);

  // The server goes away entirely.
  const std::string address = server->address();
  server.reset();
  EXPECT_EQ(run(TransferOp::kRead), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client->Connect(address).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace krul
