#include "krul/transport/fake_transport.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "krul/base/byte_order.h"
#include "transport_internal.h"

namespace krul {
namespace {

using transport_internal::Grant;
using transport_internal::WireKind;

struct RegionSlot {
  uint8_t* data = nullptr;
  size_t size = 0;
};

// Everything a fake's handles need; shared so that handles may outlive the
// FakeTransport object (the registry forgets it when the object dies).
struct FakeCore {
  explicit FakeCore(uint64_t core_id) : id(core_id) {}

  const uint64_t id;
  absl::Mutex mu;
  // Live regions by id. A transfer copies under `mu`, so a region cannot be
  // destroyed half-way through a copy, and a revoked one is seen as missing.
  absl::flat_hash_map<uint64_t, RegionSlot> regions ABSL_GUARDED_BY(mu);
  uint64_t next_region_id ABSL_GUARDED_BY(mu) = 1;
  bool unreachable ABSL_GUARDED_BY(mu) = false;
  bool closed ABSL_GUARDED_BY(mu) = false;
  int fail_next ABSL_GUARDED_BY(mu) = 0;
  absl::Status fail_status ABSL_GUARDED_BY(mu);
  TamperHook hook ABSL_GUARDED_BY(mu);
  std::atomic<uint64_t> bytes_read{0};
  std::atomic<uint64_t> bytes_written{0};

  absl::Status Reachable() {
    absl::MutexLock lock(&mu);
    if (closed) return absl::UnavailableError("fake transport peer is gone");
    if (unreachable) return absl::UnavailableError("fake transport peer is unreachable");
    return absl::OkStatus();
  }
};

// Process-wide address book: address id -> live fake.
class Registry {
 public:
  static Registry& Get() {
    static Registry* registry = new Registry();  // never destroyed (static order)
    return *registry;
  }
  std::shared_ptr<FakeCore> Add() {
    absl::MutexLock lock(&mu_);
    auto core = std::make_shared<FakeCore>(next_id_++);
    cores_[core->id] = core;
    return core;
  }
  void Remove(uint64_t id) {
    absl::MutexLock lock(&mu_);
    cores_.erase(id);
  }
  std::shared_ptr<FakeCore> Find(uint64_t id) {
    absl::MutexLock lock(&mu_);
    auto it = cores_.find(id);
    return it == cores_.end() ? nullptr : it->second;
  }

 private:
  absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, std::shared_ptr<FakeCore>> cores_ ABSL_GUARDED_BY(mu_);
};

class FakeRegion final : public MemoryRegion {
 public:
  FakeRegion(std::shared_ptr<FakeCore> core, uint8_t* data, size_t size, bool owned)
      : core_(std::move(core)), data_(data), size_(size), owned_(owned) {
    absl::MutexLock lock(&core_->mu);
    id_ = core_->next_region_id++;
    core_->regions[id_] = RegionSlot{data_, size_};
  }
  ~FakeRegion() override {
    {
      absl::MutexLock lock(&core_->mu);
      core_->regions.erase(id_);
    }
    if (owned_) std::free(data_);
  }

  uint8_t* data() const override { return data_; }
  size_t size() const override { return size_; }
  MemoryKind kind() const override { return MemoryKind::kHost; }

  absl::StatusOr<std::string> Describe(uint64_t offset, uint64_t length_bytes,
                                       absl::Time expires) const override {
    if (absl::Status s = transport_internal::CheckDescribeRange(offset, length_bytes, size_);
        !s.ok()) {
      return s;
    }
    Grant grant;
    grant.base_address = reinterpret_cast<uint64_t>(data_) + offset;
    grant.length = length_bytes;
    grant.expires = expires;
    grant.owner_id = core_->id;
    grant.region_id = id_;
    return transport_internal::EncodeGrant(WireKind::kFake, grant);
  }

  const FakeCore* core() const { return core_.get(); }

 private:
  std::shared_ptr<FakeCore> core_;
  uint8_t* const data_;
  const size_t size_;
  const bool owned_;
  uint64_t id_ = 0;
};

class FakeRemoteRegion final : public RemoteRegion {
 public:
  FakeRemoteRegion(const FakeCore* importer, std::shared_ptr<FakeCore> peer, Grant grant)
      : importer_(importer), peer_(std::move(peer)), grant_(std::move(grant)) {}

  uint64_t size() const override { return grant_.length; }
  absl::Time expires() const override { return grant_.expires; }

  const FakeCore* importer() const { return importer_; }
  FakeCore& peer() const { return *peer_; }
  const Grant& grant() const { return grant_; }

 private:
  const FakeCore* importer_;
  std::shared_ptr<FakeCore> peer_;
  const Grant grant_;
};

class FakeEndpoint final : public Endpoint {
 public:
  FakeEndpoint(std::shared_ptr<FakeCore> local, std::shared_ptr<FakeCore> peer)
      : local_(std::move(local)), peer_(std::move(peer)) {}

  absl::StatusOr<std::unique_ptr<RemoteRegion>> ImportRegion(std::string_view descriptor) override {
    absl::StatusOr<Grant> grant = transport_internal::DecodeGrant(WireKind::kFake, descriptor);
    if (!grant.ok()) return grant.status();
    if (grant->owner_id != peer_->id) {
      return absl::InvalidArgumentError(absl::StrCat("descriptor belongs to fake transport ",
                                                     grant->owner_id, ", not to this peer ",
                                                     peer_->id));
    }
    if (absl::Status s = transport_internal::CheckNotExpired(grant->expires); !s.ok()) return s;
    if (absl::Status s = status(); !s.ok()) return s;
    return std::make_unique<FakeRemoteRegion>(local_.get(), peer_, *std::move(grant));
  }

  absl::Status status() const override { return peer_->Reachable(); }

  std::string DebugString() const override {
    return absl::StrCat("fake(", local_->id, " -> ", peer_->id, ")");
  }

 private:
  std::shared_ptr<FakeCore> local_;
  std::shared_ptr<FakeCore> peer_;
};

// The copy happens in Post; Poll and Wait report it.
class FakeTransfer final : public Transfer {
 public:
  FakeTransfer(std::shared_ptr<FakeCore> local_core, TransferOp op, FakeRegion& local,
               FakeRemoteRegion& remote, std::vector<TransferSegment> segments)
      : local_core_(std::move(local_core)),
        op_(op),
        local_(local),
        remote_(remote),
        segments_(std::move(segments)) {
    for (const TransferSegment& s : segments_) total_bytes_ += s.length_bytes;
  }

  absl::Status Post() override {
    if (state_ == TransferState::kInFlight) {
      return absl::FailedPreconditionError("Post on a transfer that is already in flight");
    }
    if (absl::Status s = transport_internal::CheckNotExpired(remote_.expires()); !s.ok()) {
      return s;
    }
    if (absl::Status s = remote_.peer().Reachable(); !s.ok()) return s;
    TamperHook hook;
    bool fail = false;
    {
      absl::MutexLock lock(&local_core_->mu);
      if (local_core_->fail_next > 0) {
        --local_core_->fail_next;
        fail = true;
        result_ = local_core_->fail_status;
      }
      hook = local_core_->hook;
    }
    if (!fail) {
      result_ = Copy(hook);
      // Outside the peer's lock, so a hook may call back into transports.
      if (result_.ok() && op_ == TransferOp::kRead && hook) {
        for (const TransferSegment& s : segments_) {
          hook(op_, std::span<uint8_t>(local_.data() + s.local_offset, s.length_bytes));
        }
      }
      if (result_.ok() && observer_) {
        for (size_t i = 0; i < segments_.size(); ++i) {
          const TransferSegment& s = segments_[i];
          transport_internal::ObservePieces(observer_, i, local_.data() + s.local_offset, 0,
                                            s.length_bytes, piece_bytes_);
        }
      }
    }
    // Like UCX, the outcome is reported by Poll/Wait, so callers that forget
    // to wait are caught by tests against the fake as well.
    state_ = TransferState::kInFlight;
    return absl::OkStatus();
  }

  TransferState Poll() override {
    if (state_ == TransferState::kInFlight) {
      status_ = result_;
      state_ = status_.ok() ? TransferState::kDone : TransferState::kFailed;
    }
    return state_;
  }

  absl::Status Wait(absl::Duration /*timeout*/) override {
    if (state_ == TransferState::kPrepared) {
      return absl::FailedPreconditionError("Wait on a transfer that was never posted");
    }
    Poll();
    return status_;
  }

  absl::Status ObserveLanding(LandingObserver observer, uint64_t piece_bytes) override {
    if (absl::Status s = transport_internal::CheckObserveLanding(op_, state_, piece_bytes);
        !s.ok()) {
      return s;
    }
    observer_ = std::move(observer);
    piece_bytes_ = piece_bytes;
    return absl::OkStatus();
  }

  absl::Status status() const override {
    if (state_ == TransferState::kPrepared || state_ == TransferState::kInFlight) {
      return absl::UnknownError("transfer not complete");
    }
    return status_;
  }
  TransferState state() const override { return state_; }
  TransferOp op() const override { return op_; }
  uint64_t total_bytes() const override { return total_bytes_; }

 private:
  absl::Status Copy(const TamperHook& hook) {
    FakeCore& peer = remote_.peer();
    const Grant& grant = remote_.grant();
    // A write's bytes "in transit": private copies the hook may corrupt,
    // made before taking the peer's lock so the hook may use transports.
    std::vector<std::vector<uint8_t>> staging;
    if (op_ == TransferOp::kWrite && hook) {
      for (const TransferSegment& s : segments_) {
        const uint8_t* src = local_.data() + s.local_offset;
        staging.emplace_back(src, src + s.length_bytes);
        hook(op_, std::span<uint8_t>(staging.back()));
      }
    }
    absl::MutexLock lock(&peer.mu);
    if (peer.closed || peer.unreachable) {
      return absl::UnavailableError("fake transport peer went away during the transfer");
    }
    auto it = peer.regions.find(grant.region_id);
    if (it == peer.regions.end()) {
      return absl::AbortedError("the remote region was revoked (destroyed) by its owner");
    }
    const RegionSlot slot = it->second;
    const auto slot_begin = reinterpret_cast<uint64_t>(slot.data);
    // Re-check the grant against the live region, as a server would: a forged
    // or stale descriptor must not reach outside it.
    if (grant.base_address < slot_begin || grant.base_address - slot_begin > slot.size ||
        grant.length > slot.size - (grant.base_address - slot_begin)) {
      return absl::OutOfRangeError("the grant reaches outside the remote region");
    }
    uint8_t* remote_base = slot.data + (grant.base_address - slot_begin);
    for (size_t i = 0; i < segments_.size(); ++i) {
      const TransferSegment& s = segments_[i];
      uint8_t* local = local_.data() + s.local_offset;
      uint8_t* remote = remote_base + s.remote_offset;
      if (op_ == TransferOp::kRead) {
        std::memcpy(local, remote, s.length_bytes);
      } else {
        std::memcpy(remote, staging.empty() ? local : staging[i].data(), s.length_bytes);
      }
    }
    (op_ == TransferOp::kRead ? local_core_->bytes_read : local_core_->bytes_written) +=
        total_bytes_;
    return absl::OkStatus();
  }

  std::shared_ptr<FakeCore> local_core_;
  const TransferOp op_;
  FakeRegion& local_;
  FakeRemoteRegion& remote_;
  const std::vector<TransferSegment> segments_;
  uint64_t total_bytes_ = 0;
  TransferState state_ = TransferState::kPrepared;
  absl::Status status_;
  absl::Status result_;  // of the copy done in Post, reported by Poll/Wait
  LandingObserver observer_;
  uint64_t piece_bytes_ = 0;
};

class FakeTransportImpl final : public FakeTransport {
 public:
  FakeTransportImpl() : core_(Registry::Get().Add()) {
    std::string id_bytes;
    ::krul::internal::Append64(id_bytes, core_->id);
    address_ = transport_internal::EncodeAddress(WireKind::kFake, id_bytes);
  }
  ~FakeTransportImpl() override {
    Registry::Get().Remove(core_->id);
    absl::MutexLock lock(&core_->mu);
    core_->closed = true;
  }

  std::string_view name() const override { return "fake"; }
  const std::string& address() const override { return address_; }

  absl::StatusOr<std::unique_ptr<MemoryRegion>> AllocateRegion(size_t length_bytes) override {
    if (length_bytes == 0) return absl::InvalidArgumentError("AllocateRegion of 0 bytes");
    const size_t rounded = (length_bytes + 4095) / 4096 * 4096;
    if (rounded < length_bytes) return absl::ResourceExhaustedError("AllocateRegion: too large");
    void* p = std::aligned_alloc(4096, rounded);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("AllocateRegion: cannot allocate ", length_bytes, " bytes"));
    }
    std::memset(p, 0, rounded);
    return std::unique_ptr<MemoryRegion>(
        new FakeRegion(core_, static_cast<uint8_t*>(p), length_bytes, /*owned=*/true));
  }

  absl::StatusOr<std::unique_ptr<MemoryRegion>> RegisterRegion(void* data, size_t length_bytes,
                                                               MemoryKind kind) override {
    if (data == nullptr || length_bytes == 0) {
      return absl::InvalidArgumentError("RegisterRegion of null or empty memory");
    }
    if (kind != MemoryKind::kHost) {
      return absl::UnimplementedError("the fake transport registers host memory only");
    }
    return std::unique_ptr<MemoryRegion>(
        new FakeRegion(core_, static_cast<uint8_t*>(data), length_bytes, /*owned=*/false));
  }

  absl::StatusOr<std::unique_ptr<Endpoint>> Connect(std::string_view peer_address) override {
    absl::StatusOr<std::string> id_bytes =
        transport_internal::DecodeAddress(WireKind::kFake, peer_address);
    if (!id_bytes.ok()) return id_bytes.status();
    if (id_bytes->size() != 8) return absl::InvalidArgumentError("fake address: bad payload");
    const uint64_t id = ::krul::internal::Get64(id_bytes->data());
    std::shared_ptr<FakeCore> peer = Registry::Get().Find(id);
    if (peer == nullptr) {
      return absl::UnavailableError(absl::StrCat("no fake transport ", id, " in this process"));
    }
    if (absl::Status s = peer->Reachable(); !s.ok()) return s;
    return std::unique_ptr<Endpoint>(new FakeEndpoint(core_, std::move(peer)));
  }

  absl::StatusOr<std::unique_ptr<Transfer>> PrepareTransfer(
      TransferOp op, MemoryRegion& local, RemoteRegion& remote,
      std::span<const TransferSegment> segments) override {
    auto* fake_local = dynamic_cast<FakeRegion*>(&local);
    auto* fake_remote = dynamic_cast<FakeRemoteRegion*>(&remote);
    if (fake_local == nullptr || fake_local->core() != core_.get()) {
      return absl::InvalidArgumentError("local region does not belong to this transport");
    }
    if (fake_remote == nullptr || fake_remote->importer() != core_.get()) {
      return absl::InvalidArgumentError("remote region was not imported by this transport");
    }
    if (absl::Status s = transport_internal::ValidateTransfer(segments, local, remote); !s.ok()) {
      return s;
    }
    if (absl::Status s = fake_remote->peer().Reachable(); !s.ok()) return s;
    return std::unique_ptr<Transfer>(
        new FakeTransfer(core_, op, *fake_local, *fake_remote,
                         std::vector<TransferSegment>(segments.begin(), segments.end())));
  }

  void SetTamperHookForTesting(TamperHook hook) override {
    absl::MutexLock lock(&core_->mu);
    core_->hook = std::move(hook);
  }

  void FailNextTransfers(int count, absl::Status status) override {
    absl::MutexLock lock(&core_->mu);
    core_->fail_next = count;
    core_->fail_status =
        status.ok() ? absl::InternalError("FailNextTransfers with an OK status") : status;
  }

  void SetUnreachable(bool unreachable) override {
    absl::MutexLock lock(&core_->mu);
    core_->unreachable = unreachable;
  }

  uint64_t bytes_read() const override { return core_->bytes_read.load(); }
  uint64_t bytes_written() const override { return core_->bytes_written.load(); }

 private:
  std::shared_ptr<FakeCore> core_;
  std::string address_;
};

}  // namespace

std::unique_ptr<FakeTransport> FakeTransport::Create() {
  return std::make_unique<FakeTransportImpl>();
}

}  // namespace krul
