// The KV store data plane: bulk block transfers between a client's memory and
// a server's memory, driven by the client: it reads or writes a byte range
// the server granted. Depending on the implementation the server's CPU takes
// no part (shared memory, RMA) or only checks and serves each request (UCX's
// messages protocol); see ucx_transport.h.
//
// Lifecycle (modelled on NIXL and UCX ucp):
//  1. Each process creates one Transport (NewUcxTransport in ucx_transport.h,
//     or the in-process fake in fake_transport.h). Transport::address() is
//     opaque bytes that the control plane (gRPC) carries to peers.
//  2. The owner of memory (the kvstore server) registers it once:
//     AllocateRegion or RegisterRegion -> MemoryRegion (RAII: deregistered
//     when destroyed). For each grant (e.g. the blocks of one BeginPut or one
//     Lookup) it hands out MemoryRegion::Describe(offset, length, expires)
//     bytes through the control plane.
//  3. The client registers its own buffer (a MemoryRegion too), Connects to
//     the server's address -> Endpoint, and imports the grant ->
//     RemoteRegion.
//  4. PrepareTransfer(kRead | kWrite, local, remote, segments) -> Transfer;
//     then Post, Poll or Wait, and destroy. A completed Transfer may be posted
//     again (same segments, e.g. a benchmark loop or a retry).
//
// Per-layer pipelining: prepare and Post one Transfer per layer block, then
// Wait for them in layer order; layer 0 can be used while later layers are
// still in flight. Transfers on one endpoint usually finish in posting order,
// but only Wait/Poll on a given Transfer tells that it is done.
//
// Completion semantics: a kRead is done when the bytes are in local memory;
// a kWrite is done when the bytes are in the remote memory (remote
// completion, so the writer may CommitPut right after Wait returns OK).
//
// Errors (absl::Status codes, the same in every implementation):
//   INVALID_ARGUMENT    malformed address or descriptor bytes, empty or
//                       zero-length segments, a region or endpoint from
//                       another Transport.
//   OUT_OF_RANGE        a segment outside the local region or outside the
//                       remote grant (checked at PrepareTransfer, before any
//                       byte moves), or Describe outside the region; also
//                       from Wait when the server refuses a forged grant.
//   PERMISSION_DENIED   the remote grant has expired (checked at Import,
//                       Prepare and Post against this host's clock).
//   FAILED_PRECONDITION Post on a Transfer that is already in flight.
//   UNAVAILABLE         the peer is unreachable or the connection failed;
//                       reconnect (new Endpoint) and retry.
//   ABORTED             the server revoked the grant (destroyed the region):
//                       ask the control plane again. Reported by the fake and
//                       by UCX's messages protocol; UCX's one-sided protocols
//                       cannot tell (see ucx_transport.h).
//   DEADLINE_EXCEEDED   Wait timed out; the transfer is still in flight.
//   RESOURCE_EXHAUSTED  memory could not be allocated or registered.
// The transport moves bytes and does not checksum them: integrity is the KV
// block codec's job (a flipped byte surfaces there as DATA_LOSS).
//
// Security: the descriptor (which carries the UCX remote key) is the
// capability. Hand it out only over the authenticated control plane, grant
// only the byte range a request needs, and give it a short expiry; revoke it
// by destroying the region. One-sided RMA means the server cannot vet each
// access, so expiry and range are enforced by the importing Transport.
//
// Ownership: every handle (MemoryRegion, Endpoint, RemoteRegion, Transfer)
// keeps the transport's internals alive, so handles may outlive the
// Transport object (they just stop progressing in the background). A
// Transfer refers to its local MemoryRegion and RemoteRegion: both must
// outlive it.
//
// Thread safety: Transport, MemoryRegion, Endpoint and RemoteRegion are
// thread-safe. A single Transfer must not be used by two threads at once;
// distinct Transfers may be posted and waited from any threads.
#ifndef KRUL_TRANSPORT_TRANSPORT_H_
#define KRUL_TRANSPORT_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace krul {

// Where registered memory lives. Only kHost is implemented today; kCuda is
// reserved for GPU-direct restore (UCX cuda_copy / GPUDirect RDMA).
enum class MemoryKind { kHost, kCuda };

// kRead: remote -> local (a Get of stored KV). kWrite: local -> remote (Put).
enum class TransferOp { kRead, kWrite };

enum class TransferState {
  kPrepared,  // created or re-armed, not yet posted
  kInFlight,  // posted, not complete
  kDone,      // complete, status() is OK
  kFailed,    // complete, status() holds the error
};

std::string_view TransferOpName(TransferOp op);  // "read" / "write"

// One contiguous piece of a transfer. Offsets are in bytes: `local_offset`
// into the local MemoryRegion, `remote_offset` into the remote grant (0 is
// the first byte the descriptor covers, not the start of the server region).
struct TransferSegment {
  uint64_t local_offset = 0;
  uint64_t remote_offset = 0;
  uint64_t length_bytes = 0;
};

// Test hook for fault injection: called once per segment with the bytes "in
// transit". For kRead it sees the local destination after the bytes landed
// and before the Transfer reports kDone; for kWrite it sees a private copy of
// the source just before it is sent (the caller's buffer is not changed).
// Tests flip bytes here to prove that checksums catch corruption. Runs on the
// thread that calls Post (kWrite) or Poll/Wait (kRead).
using TamperHook = std::function<void(TransferOp op, std::span<uint8_t> bytes)>;

// Sees a kRead's bytes as they land (Transfer::ObserveLanding): piece
// `bytes` of segment `segment` (an index into the transfer's segments),
// starting `offset` bytes into that segment. A segment's pieces come in
// order, after the tamper hook, before the transfer reports kDone.
using LandingObserver =
    std::function<void(size_t segment, uint64_t offset, std::span<const uint8_t> bytes)>;

// Local memory registered with the transport. Destroying it deregisters the
// memory (and, for AllocateRegion, frees it) and revokes every descriptor
// handed out for it.
class MemoryRegion {
 public:
  virtual ~MemoryRegion() = default;
  MemoryRegion(const MemoryRegion&) = delete;
  MemoryRegion& operator=(const MemoryRegion&) = delete;

  virtual uint8_t* data() const = 0;
  virtual size_t size() const = 0;
  virtual MemoryKind kind() const = 0;

  // Returns descriptor bytes granting a peer access to
  // [offset, offset + length_bytes) of this region until `expires`.
  // OUT_OF_RANGE when the range is empty or exceeds size().
  virtual absl::StatusOr<std::string> Describe(
      uint64_t offset, uint64_t length_bytes,
      absl::Time expires = absl::InfiniteFuture()) const = 0;

  // Withdraws a descriptor this region handed out, before its expiry.
  // Implementations that vet every request on the serving side (UCX's
  // messages protocol) refuse later requests under it with ABORTED; the
  // one-sided protocols (a mapped region, RMA) cannot be stopped this way,
  // only by destroying the region. Unknown or malformed descriptors are
  // ignored. Default: does nothing.
  virtual void Revoke(std::string_view descriptor) const {}

 protected:
  MemoryRegion() = default;
};

// A peer's grant, imported through an Endpoint. Destroying it releases the
// unpacked remote key; it does not affect the peer's memory.
class RemoteRegion {
 public:
  virtual ~RemoteRegion() = default;
  RemoteRegion(const RemoteRegion&) = delete;
  RemoteRegion& operator=(const RemoteRegion&) = delete;

  // Bytes the grant covers; valid remote offsets are [0, size()).
  virtual uint64_t size() const = 0;
  virtual absl::Time expires() const = 0;

 protected:
  RemoteRegion() = default;
};

// A connection to one peer Transport. Cheap to keep; reuse it for all
// transfers to that peer.
class Endpoint {
 public:
  virtual ~Endpoint() = default;
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  // Parses a MemoryRegion::Describe() result from the peer.
  // INVALID_ARGUMENT malformed bytes or a descriptor of another transport
  // kind; PERMISSION_DENIED expired; UNAVAILABLE the endpoint has failed.
  virtual absl::StatusOr<std::unique_ptr<RemoteRegion>> ImportRegion(
      std::string_view descriptor) = 0;

  // OK while usable; UNAVAILABLE once the connection failed (then create a
  // new Endpoint).
  virtual absl::Status status() const = 0;

  // Human-readable connection details (for UCX: the transports it chose,
  // e.g. "tcp/lo" or "cma/memory"). For logs and tests only.
  virtual std::string DebugString() const = 0;

 protected:
  Endpoint() = default;
};

// A prepared transfer: a list of segments between one local region and one
// remote grant. Destroying a Transfer that is in flight blocks until the
// transport completes or fails it (the memory is in use until then).
class Transfer {
 public:
  virtual ~Transfer() = default;
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;

  // Starts the transfer. FAILED_PRECONDITION if it is in flight;
  // PERMISSION_DENIED if the grant expired; UNAVAILABLE if the endpoint
  // failed. A Transfer that is kDone or kFailed may be posted again.
  virtual absl::Status Post() = 0;

  // Makes progress without blocking and returns the current state.
  virtual TransferState Poll() = 0;

  // Blocks until the transfer completes or `timeout` passes. Returns the
  // transfer's status (see the file comment), or DEADLINE_EXCEEDED while it
  // is still in flight (Wait again later). FAILED_PRECONDITION if it was
  // never posted.
  virtual absl::Status Wait(absl::Duration timeout = absl::InfiniteDuration()) = 0;

  // For a kRead: calls `observer` with every piece (at most `piece_bytes`)
  // of the destination once it has landed, on the thread that completes the
  // transfer. Where the transport itself copies (UCX over shared memory:
  // Post copies) it copies piece by piece and calls the observer in between,
  // so work on the bytes (a checksum) finds them in cache instead of reading
  // memory a second time; otherwise the pieces come when the transfer
  // completes (Poll or Wait). Pieces of a failed transfer may have been
  // observed. Applies to every later Post; nullptr removes it. The observer
  // must not use this transfer. INVALID_ARGUMENT for a kWrite or a zero
  // piece size; FAILED_PRECONDITION while in flight.
  virtual absl::Status ObserveLanding(LandingObserver observer, uint64_t piece_bytes) = 0;

  // OK when kDone; the error when kFailed; UNKNOWN before completion.
  virtual absl::Status status() const = 0;
  virtual TransferState state() const = 0;

  virtual TransferOp op() const = 0;
  virtual uint64_t total_bytes() const = 0;

 protected:
  Transfer() = default;
};

// Counters of one Transport's imports (Transport::stats). Monotonic.
struct TransportStats {
  // Grants imported through this Transport's endpoints (successful
  // Endpoint::ImportRegion calls).
  uint64_t grants_imported = 0;
  // Of those, the ones that had to import the peer's region itself: for UCX,
  // unpack its remote key and, on the same host, map its memory here. Later
  // grants of a region imported through the same Endpoint reuse that import,
  // so per-request grants cost no mapping after the first.
  uint64_t regions_imported = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  // "ucx" or "fake": the `transport` label of krul_kvstore_transfer_bytes_total.
  virtual std::string_view name() const = 0;

  // Opaque bytes a peer passes to Connect(). Stable for the Transport's life.
  virtual const std::string& address() const = 0;

  // Allocates `length_bytes` of host memory that the transport can serve
  // best (for UCX: mapped so same-host peers copy straight from it), zeroed.
  // INVALID_ARGUMENT for 0 bytes; RESOURCE_EXHAUSTED when out of memory.
  virtual absl::StatusOr<std::unique_ptr<MemoryRegion>> AllocateRegion(size_t length_bytes) = 0;

  // Registers caller-owned memory, which must stay valid until the region is
  // destroyed. INVALID_ARGUMENT for null/empty; UNIMPLEMENTED for a memory
  // kind the build lacks; RESOURCE_EXHAUSTED when registration fails.
  virtual absl::StatusOr<std::unique_ptr<MemoryRegion>> RegisterRegion(
      void* data, size_t length_bytes, MemoryKind kind = MemoryKind::kHost) = 0;

  // Connects to the Transport whose address() is `peer_address`. The
  // connection is set up lazily; failures also show up as UNAVAILABLE from
  // later transfers. INVALID_ARGUMENT malformed address; UNAVAILABLE
  // unreachable peer.
  virtual absl::StatusOr<std::unique_ptr<Endpoint>> Connect(std::string_view peer_address) = 0;

  // Prepares a transfer between `local` (a region of this Transport) and
  // `remote` (imported through an Endpoint of this Transport). Validates
  // every segment; moves no bytes. See the file comment for codes.
  virtual absl::StatusOr<std::unique_ptr<Transfer>> PrepareTransfer(
      TransferOp op, MemoryRegion& local, RemoteRegion& remote,
      std::span<const TransferSegment> segments) = 0;

  // Installs (or, with nullptr, removes) the fault-injection hook for
  // transfers posted afterwards. Testing only.
  virtual void SetTamperHookForTesting(TamperHook hook) = 0;

  // Import counters, for tests and metrics. The fake reports zeros.
  virtual TransportStats stats() const { return {}; }

 protected:
  Transport() = default;
};

// Convenience: Prepare, Post and Wait one transfer.
absl::Status TransferSync(Transport& transport, TransferOp op, MemoryRegion& local,
                          RemoteRegion& remote, std::span<const TransferSegment> segments,
                          absl::Duration timeout = absl::InfiniteDuration());

}  // namespace krul

#endif  // KRUL_TRANSPORT_TRANSPORT_H_
