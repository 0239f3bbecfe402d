// Internals of the UCX transport shared by ucx_transport.cc (context,
// worker, regions, endpoints), ucx_transport_messages.cc (the active-message
// protocol) and ucx_transport_transfer.cc (transfers).
//
// Locking: every ucp call on a Transport's context and worker runs under
// UcxCore::mu() (the worker is created UCS_THREAD_MODE_SERIALIZED). UCX
// invokes completion, error and active-message callbacks from inside
// ucp_worker_progress, i.e. with mu() held, so state those callbacks touch
// is guarded by mu().
#ifndef KRUL_COMMON_TRANSPORT_UCX_UCX_TRANSPORT_INTERNAL_H_
#define KRUL_COMMON_TRANSPORT_UCX_UCX_TRANSPORT_INTERNAL_H_

#include <ucp/api/ucp.h>

#include <atomic>
#include <bit>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "krul/transport/transport.h"
#include "krul/transport/ucx_transport.h"
#include "transport_internal.h"

namespace krul::ucx_internal {

// RAII for UCX handles.
struct ConfigDeleter {
  void operator()(ucp_config_t* c) const { ucp_config_release(c); }
};
struct ContextDeleter {
  void operator()(ucp_context_h c) const { ucp_cleanup(c); }
};
struct WorkerDeleter {
  void operator()(ucp_worker_h w) const { ucp_worker_destroy(w); }
};
using ConfigPtr = std::unique_ptr<ucp_config_t, ConfigDeleter>;
using ContextPtr = std::unique_ptr<std::remove_pointer_t<ucp_context_h>, ContextDeleter>;
using WorkerPtr = std::unique_ptr<std::remove_pointer_t<ucp_worker_h>, WorkerDeleter>;

// Maps a UCX status to a canonical code: transport failures are UNAVAILABLE
// (retry on a new endpoint), bad parameters INVALID_ARGUMENT, memory
// RESOURCE_EXHAUSTED.
absl::Status FromUcs(ucs_status_t status, std::string_view what);

// ------------------------------------------------ active-message protocol
//
// Four messages (ids below); headers are fixed-size little-endian structs
// (static_assert'ed below), validated by size before use.
//   client -> server  kAmReadRequest   AmRequest, no payload
//   server -> client  kAmReadReply     AmReply, payload = the bytes if OK
//   client -> server  kAmWriteRequest  AmRequest, payload = the bytes
//   server -> client  kAmWriteReply    AmReply, no payload (sent once the
//                                      bytes are in the server's memory)
static_assert(std::endian::native == std::endian::little,
              "the active-message headers are little-endian structs");
enum AmId : unsigned {
  kAmReadRequest = 1,
  kAmReadReply = 2,
  kAmWriteRequest = 3,
  kAmWriteReply = 4,
};
struct AmRequest {
  uint64_t request_id;  // chosen by the client, echoed in the reply
  uint64_t region_id;   // from the grant
  uint64_t address;     // absolute address in the server's region
  uint64_t length;
  uint64_t grant_id;  // from the grant: the server's record it must stay in
};
struct AmReply {
  uint64_t request_id;
  int32_t code;  // absl::StatusCode
  uint32_t reserved;
  uint64_t length;  // payload bytes that follow (reads)
};
static_assert(sizeof(AmRequest) == 40 && sizeof(AmReply) == 24);

class UcxCore;
class UcxEpState;

// Receives the completion of one UCX operation a transfer started. Called
// with UcxCore::mu() held.
class OpSink {
 public:
  virtual void OnOpComplete(const absl::Status& status) = 0;

 protected:
  ~OpSink() = default;
};

// One request of the messages protocol (or one RMA operation), owned by its
// transfer and alive until complete; UCX callbacks get a pointer to it.
struct AmOp {
  OpSink* sink = nullptr;
  UcxCore* core = nullptr;
  AmRequest header{};
};

// A request this side sent and whose reply has not arrived yet.
struct PendingRequest {
  OpSink* sink = nullptr;
  const UcxEpState* ep = nullptr;  // to fail it when the endpoint fails
  uint8_t* destination = nullptr;  // reads: where the payload goes
  uint64_t length = 0;
};

// A region this side serves to peers of the messages protocol.
struct ServedRegion {
  uint8_t* data = nullptr;
  size_t size = 0;
  int in_flight = 0;     // server-side sends/receives touching the memory
  bool revoked = false;  // being destroyed: refuse new requests
};

// A grant this side handed out (UcxRegion::Describe). Requests of the
// messages protocol name it by its id (the descriptor's grant_id, an
// unguessable random number) and must stay inside [begin, begin + length)
// before `expires`; Revoke or the region's destruction withdraws it.
struct ServedGrant {
  uint64_t region_id = 0;  // the served region it lies in
  uint64_t begin = 0;      // absolute address of the first granted byte
  uint64_t length = 0;
  absl::Time expires = absl::InfiniteFuture();
};

// One ucp context + worker, shared by the Transport object and all handles.
class UcxCore {
 public:
  static absl::StatusOr<std::shared_ptr<UcxCore>> Create(const UcxTransportOptions& options);
  ~UcxCore();

  absl::Mutex& mu() ABSL_LOCK_RETURNED(mu_) { return mu_; }
  ucp_context_h context() const { return context_.get(); }
  ucp_worker_h worker() const { return worker_.get(); }
  uint64_t id() const { return id_; }
  const std::string& address() const { return address_; }
  size_t max_op_bytes() const { return max_op_bytes_; }
  UcxTransportOptions::Protocol protocol() const { return protocol_; }
  bool detect_peer_failure() const { return detect_peer_failure_; }

  TamperHook hook() const;
  void set_hook(TamperHook hook);

  // Transport::stats() counters.
  void CountImport(bool region_imported) {
    grants_imported_.fetch_add(1, std::memory_order_relaxed);
    if (region_imported) regions_imported_.fetch_add(1, std::memory_order_relaxed);
  }
  TransportStats stats() const {
    return TransportStats{grants_imported_.load(std::memory_order_relaxed),
                          regions_imported_.load(std::memory_order_relaxed)};
  }

  // One ucp_worker_progress call; returns whether anything happened.
  bool ProgressLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return ucp_worker_progress(worker_.get()) != 0;
  }

  // Blocks the calling thread (without mu held) until the worker may have
  // work or `timeout` passes. Returns immediately if events are pending.
  void WaitForEvents(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);

  void StartProgressThread();
  void StopProgressThread();

  // Threads blocked in Transfer::Wait progress the worker themselves; while
  // any does, the progress thread stands aside instead of contending for mu.
  void AddWaiter() { waiters_.fetch_add(1); }
  void RemoveWaiter() { waiters_.fetch_sub(1); }

  // Served regions (messages protocol, server side).
  uint64_t AddServedRegion(uint8_t* data, size_t size) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stops serving the region, waits (progressing) until no UCX operation
  // touches its memory any more, and forgets it.
  void RemoveServedRegion(uint64_t region_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records a grant of [begin, begin + length) of served region
  // `region_id` until `expires`; returns its id (random, never 0).
  uint64_t AddServedGrant(uint64_t region_id, uint64_t begin, uint64_t length, absl::Time expires)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Withdraws grant `grant_id` (no-op when unknown).
  void RevokeServedGrant(uint64_t grant_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Checks a request for [address, address + length) of region
  // `region_id` under grant `grant_id`: ABORTED when the region or the
  // grant is revoked or unknown (or the grant is of another region),
  // PERMISSION_DENIED when the grant has expired, OUT_OF_RANGE when the
  // range leaves the grant. On OK sets `*target`.
  absl::StatusCode CheckServed(uint64_t region_id, uint64_t grant_id, uint64_t address,
                               uint64_t length, uint8_t** target)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ServedOpStarted(uint64_t region_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ServedOpDone(uint64_t region_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Requests awaiting replies (messages protocol, client side).
  uint64_t AddPending(const PendingRequest& request) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<PendingRequest> TakePending(uint64_t request_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Completes every pending request on `ep` with `status`.
  void FailPending(const UcxEpState* ep, const absl::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

 private:
  UcxCore() = default;
  void ProgressLoop();

  uint64_t id_ = 0;
  size_t max_op_bytes_ = 0;
  UcxTransportOptions::Protocol protocol_ = UcxTransportOptions::Protocol::kAuto;
  bool detect_peer_failure_ = true;
  absl::Mutex mu_;
  // Order matters: the worker must be destroyed before its context.
  ContextPtr context_;
  WorkerPtr worker_;
  std::string address_;  // framed: id + ucp worker address
  int event_fd_ = -1;    // the worker's, owned by UCX; -1 without wakeup
  int stop_fd_ = -1;     // eventfd that wakes the progress thread to stop
  std::thread progress_thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> waiters_{0};
  std::atomic<uint64_t> grants_imported_{0};
  std::atomic<uint64_t> regions_imported_{0};

  uint64_t next_region_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, ServedRegion> served_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, ServedGrant> grants_ ABSL_GUARDED_BY(mu_);
  size_t grants_after_sweep_ ABSL_GUARDED_BY(mu_) = 0;  // expired ones dropped then
  uint64_t next_request_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, PendingRequest> pending_ ABSL_GUARDED_BY(mu_);

  mutable absl::Mutex hook_mu_;
  TamperHook hook_ ABSL_GUARDED_BY(hook_mu_);
};

// Registers the active-message handlers on `core`'s worker (in
// ucx_transport_messages.cc).
absl::Status RegisterMessageHandlers(UcxCore& core);

// Sends one request of the messages protocol (in ucx_transport_messages.cc)
// for `op->header` (request_id is filled in here). `local` is the read
// destination or the write source. Returns how many OnOpComplete calls
// `op->sink` will receive (1: the reply; 2: the reply and the send), or an
// error when nothing was sent.
absl::StatusOr<int> SendRequestLocked(UcxCore& core, UcxEpState& ep, TransferOp transfer_op,
                                      AmOp* op, uint8_t* local, ucp_mem_h memh)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(core.mu());

// A peer's region imported through one endpoint: its unpacked remote key,
// which on the same host also maps the peer's shared memory here (UCX's
// posix/sysv transports attach the segment in ucp_ep_rkey_unpack and detach
// it in ucp_rkey_destroy). Shared by every grant of that region imported
// through the endpoint, so the mapping and its page faults happen once per
// client-server pair instead of once per request.
class UcxRemoteKey {
 public:
  UcxRemoteKey(std::shared_ptr<UcxCore> core, ucp_rkey_h rkey)
      : core_(std::move(core)), rkey_(rkey) {}
  ~UcxRemoteKey();
  UcxRemoteKey(const UcxRemoteKey&) = delete;
  UcxRemoteKey& operator=(const UcxRemoteKey&) = delete;

  ucp_rkey_h get() const { return rkey_; }

 private:
  std::shared_ptr<UcxCore> core_;
  const ucp_rkey_h rkey_;
};

// A ucp endpoint plus its failure state and the peer regions imported
// through it; shared by the Endpoint handle and the remote regions imported
// through it.
class UcxEpState {
 public:
  UcxEpState(std::shared_ptr<UcxCore> core, uint64_t peer_id)
      : core_(std::move(core)), peer_id_(peer_id) {}
  ~UcxEpState();

  // Creates the ucp endpoint. Call once, right after construction.
  absl::Status Open(std::string_view worker_address);

  UcxCore& core() const { return *core_; }
  ucp_ep_h ep() const { return ep_; }
  uint64_t peer_id() const { return peer_id_; }
  absl::Status status() const;

  // The remote key of the peer's region `region_id` packed as `packed`,
  // unpacked on first use and then cached (LRU, kRemoteKeyCacheCapacity
  // regions). Keyed by region id and key bytes, never by the grant: grants
  // (range, expiry) stay per request and are checked by the caller. Sets
  // `*unpacked` when this call unpacked the key. UNAVAILABLE/INVALID_ARGUMENT
  // when UCX rejects the key.
  absl::StatusOr<std::shared_ptr<UcxRemoteKey>> ImportKey(uint64_t region_id,
                                                          std::string_view packed, bool* unpacked)
      ABSL_LOCKS_EXCLUDED(keys_mu_);

  // Regions cached per endpoint. Arena chunks of a kvstore are 256 MiB, so
  // this covers 64 GiB of store memory; a cached region stays mapped here
  // (virtual address space only, while the peer keeps it) until evicted or
  // the endpoint goes.
  static constexpr size_t kRemoteKeyCacheCapacity = 256;

 private:
  static void OnError(void* arg, ucp_ep_h ep, ucs_status_t status);

  using KeyList = std::list<std::pair<std::string, std::shared_ptr<UcxRemoteKey>>>;

  std::shared_ptr<UcxCore> core_;
  const uint64_t peer_id_;
  ucp_ep_h ep_ = nullptr;
  std::atomic<int> error_{UCS_OK};  // ucs_status_t set by OnError
  // Taken before core_->mu() (never the other way round).
  absl::Mutex keys_mu_;
  KeyList keys_ ABSL_GUARDED_BY(keys_mu_);  // most recently used first
  absl::flat_hash_map<std::string, KeyList::iterator> key_index_ ABSL_GUARDED_BY(keys_mu_);
};

class UcxRegion final : public MemoryRegion {
 public:
  // Takes ownership of `memh` (and so of the memory of an allocation) and of
  // `rkey_buffer`; serves the region under `served_id`.
  UcxRegion(std::shared_ptr<UcxCore> core, ucp_mem_h memh, uint8_t* data, size_t size,
            void* rkey_buffer, size_t rkey_size, uint64_t served_id);
  ~UcxRegion() override;

  uint8_t* data() const override { return data_; }
  size_t size() const override { return size_; }
  MemoryKind kind() const override { return MemoryKind::kHost; }
  // Each descriptor names a grant of its own (UcxCore::AddServedGrant).
  absl::StatusOr<std::string> Describe(uint64_t offset, uint64_t length_bytes,
                                       absl::Time expires) const override;
  void Revoke(std::string_view descriptor) const override;

  const UcxCore* core() const { return core_.get(); }
  ucp_mem_h memh() const { return memh_; }

 private:
  std::shared_ptr<UcxCore> core_;
  ucp_mem_h memh_;
  uint8_t* const data_;
  const size_t size_;
  void* rkey_buffer_;
  const size_t rkey_size_;
  const uint64_t served_id_;
};

// One grant: a window (range, expiry) onto a region imported through `ep`.
class UcxRemoteRegion final : public RemoteRegion {
 public:
  UcxRemoteRegion(std::shared_ptr<UcxEpState> ep, std::shared_ptr<UcxRemoteKey> key,
                  uint8_t* mapped, transport_internal::Grant grant)
      : ep_(std::move(ep)), key_(std::move(key)), mapped_(mapped), grant_(std::move(grant)) {}

  uint64_t size() const override { return grant_.length; }
  absl::Time expires() const override { return grant_.expires; }

  const std::shared_ptr<UcxEpState>& ep() const { return ep_; }
  ucp_rkey_h rkey() const { return key_->get(); }
  // The granted bytes mapped into this process, or nullptr.
  uint8_t* mapped() const { return mapped_; }
  uint64_t base_address() const { return grant_.base_address; }
  uint64_t region_id() const { return grant_.region_id; }
  uint64_t grant_id() const { return grant_.grant_id; }

 private:
  // Declared before key_: the key is released (ucp_rkey_destroy) before the
  // endpoint it was unpacked on can go.
  std::shared_ptr<UcxEpState> ep_;
  std::shared_ptr<UcxRemoteKey> key_;
  uint8_t* const mapped_;
  const transport_internal::Grant grant_;
};

// Defined in ucx_transport_transfer.cc.
std::unique_ptr<Transfer> NewUcxTransfer(TransferOp op, UcxRegion& local, UcxRemoteRegion& remote,
                                         std::span<const TransferSegment> segments);

}  // namespace krul::ucx_internal

#endif  // KRUL_COMMON_TRANSPORT_UCX_UCX_TRANSPORT_INTERNAL_H_
