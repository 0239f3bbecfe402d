// The serving side of UCX's messages protocol checks every request against
// the grant it names (range, expiry, revocation), whatever the client
// checked: a client that forges its descriptor (a longer range, a later
// expiry, another grant id) is refused by the server.
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "krul/transport/transport.h"
#include "krul/transport/ucx_transport.h"
#include "test_support/wait.h"
#include "transport_internal.h"

namespace krul {
namespace {

using transport_internal::DecodeGrant;
using transport_internal::EncodeGrant;
using transport_internal::Grant;
using transport_internal::WireKind;

constexpr size_t kRegionBytes = 64 << 10;
constexpr size_t kGrantBytes = 4 << 10;

// Server and client UCX transports in one process; the client always uses
// the messages protocol (the one the server can check), over shared memory
// or, with the parameter, TCP on loopback.
class GrantCheckTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    UcxTransportOptions o;
    o.force_tcp = GetParam();
    auto server = NewUcxTransport(o);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    o.protocol = UcxTransportOptions::Protocol::kMessages;
    auto client = NewUcxTransport(o);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    auto region = server_->AllocateRegion(kRegionBytes);
    ASSERT_TRUE(region.ok()) << region.status();
    region_ = *std::move(region);
    std::memset(region_->data(), 0x5a, kRegionBytes);
    buffer_.assign(kRegionBytes, 0);
    auto local = client_->RegisterRegion(buffer_.data(), buffer_.size());
    ASSERT_TRUE(local.ok()) << local.status();
    local_ = *std::move(local);
    auto ep = client_->Connect(server_->address());
    ASSERT_TRUE(ep.ok()) << ep.status();
    endpoint_ = *std::move(ep);
  }
  void TearDown() override {
    endpoint_.reset();
    local_.reset();
    region_.reset();
    client_.reset();
    server_.reset();
  }

  // The grant of `descriptor`, changed by `forge`, imported by the client.
  template <typename Forge>
  std::unique_ptr<RemoteRegion> ImportForged(const std::string& descriptor, Forge forge) {
    absl::StatusOr<Grant> grant = DecodeGrant(WireKind::kUcx, descriptor);
    EXPECT_TRUE(grant.ok()) << grant.status();
    if (!grant.ok()) return nullptr;
    forge(*grant);
    auto remote = endpoint_->ImportRegion(EncodeGrant(WireKind::kUcx, *grant));
    EXPECT_TRUE(remote.ok()) << remote.status();
    return remote.ok() ? *std::move(remote) : nullptr;
  }

  absl::StatusCode Read(RemoteRegion& remote, uint64_t offset, uint64_t length) {
    const TransferSegment segment{0, offset, length};
    return TransferSync(*client_, TransferOp::kRead, *local_, remote,
                        std::span<const TransferSegment>(&segment, 1), absl::Seconds(30))
        .code();
  }
  absl::StatusCode Write(RemoteRegion& remote, uint64_t offset, uint64_t length) {
    const TransferSegment segment{0, offset, length};
    return TransferSync(*client_, TransferOp::kWrite, *local_, remote,
                        std::span<const TransferSegment>(&segment, 1), absl::Seconds(30))
        .code();
  }

  std::unique_ptr<Transport> server_;
  std::unique_ptr<Transport> client_;
  std::unique_ptr<MemoryRegion> region_;
  std::vector<uint8_t> buffer_;
  std::unique_ptr<MemoryRegion> local_;
  std::unique_ptr<Endpoint> endpoint_;
};

TEST_P(GrantCheckTest, ARangeBeyondTheGrantIsRefusedByTheServer) {
  auto descriptor = region_->Describe(0, kGrantBytes, absl::Now() + absl::Hours(1));
  ASSERT_TRUE(descriptor.ok());
  auto honest = ImportForged(*descriptor, [](Grant&) {});
  ASSERT_NE(honest, nullptr);
  EXPECT_EQ(Read(*honest, 0, kGrantBytes), absl::StatusCode::kOk);
  // The client claims the whole region under the same grant id.
  auto wide = ImportForged(*descriptor, [](Grant& g) { g.length = kRegionBytes; });
  ASSERT_NE(wide, nullptr);
  EXPECT_EQ(Read(*wide, kGrantBytes, kGrantBytes), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(Write(*wide, kRegionBytes - kGrantBytes, kGrantBytes), absl::StatusCode::kOutOfRange);
  // The bytes beyond the grant were not touched.
  for (size_t i = kGrantBytes; i < kRegionBytes; ++i) {
    ASSERT_EQ(region_->data()[i], 0x5a) << i;
  }
}

TEST_P(GrantCheckTest, AnExpiredGrantIsRefusedEvenWithAForgedExpiry) {
  const absl::Time expires = absl::Now() + absl::Milliseconds(300);
  auto descriptor = region_->Describe(0, kGrantBytes, expires);
  ASSERT_TRUE(descriptor.ok());
  auto forever = ImportForged(*descriptor, [](Grant& g) { g.expires = absl::InfiniteFuture(); });
  ASSERT_NE(forever, nullptr);
  EXPECT_EQ(Read(*forever, 0, kGrantBytes), absl::StatusCode::kOk);
  ASSERT_TRUE(testing::WaitFor([&] { return absl::Now() > expires; }, absl::Seconds(10),
                               "the grant's expiry"));
  EXPECT_EQ(Read(*forever, 0, kGrantBytes), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(Write(*forever, 0, kGrantBytes), absl::StatusCode::kPermissionDenied);
}

TEST_P(GrantCheckTest, ARevokedGrantIsRefusedWhileTheRegionLives) {
  auto descriptor = region_->Describe(0, kGrantBytes, absl::Now() + absl::Hours(1));
  ASSERT_TRUE(descriptor.ok());
  auto other = region_->Describe(kGrantBytes, kGrantBytes, absl::Now() + absl::Hours(1));
  ASSERT_TRUE(other.ok());
  auto remote = ImportForged(*descriptor, [](Grant&) {});
  auto still = ImportForged(*other, [](Grant&) {});
  ASSERT_NE(remote, nullptr);
  ASSERT_NE(still, nullptr);
  EXPECT_EQ(Read(*remote, 0, kGrantBytes), absl::StatusCode::kOk);
  region_->Revoke(*descriptor);
  EXPECT_EQ(Read(*remote, 0, kGrantBytes), absl::StatusCode::kAborted);
  EXPECT_EQ(Write(*remote, 0, kGrantBytes), absl::StatusCode::kAborted);
  // Only that grant: another one of the same region still works.
  EXPECT_EQ(Read(*still, 0, kGrantBytes), absl::StatusCode::kOk);
}

TEST_P(GrantCheckTest, AGrantIdNeverIssuedIsRefused) {
  auto descriptor = region_->Describe(0, kGrantBytes, absl::Now() + absl::Hours(1));
  ASSERT_TRUE(descriptor.ok());
  auto guessed = ImportForged(*descriptor, [](Grant& g) { g.grant_id ^= 0x9e3779b97f4a7c15ull; });
  ASSERT_NE(guessed, nullptr);
  EXPECT_EQ(Read(*guessed, 0, kGrantBytes), absl::StatusCode::kAborted);
  auto none = ImportForged(*descriptor, [](Grant& g) { g.grant_id = 0; });
  ASSERT_NE(none, nullptr);
  EXPECT_EQ(Read(*none, 0, kGrantBytes), absl::StatusCode::kAborted);
}

INSTANTIATE_TEST_SUITE_P(Wires, GrantCheckTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Tcp" : "Shm";
                         });

}  // namespace
}  // namespace krul
