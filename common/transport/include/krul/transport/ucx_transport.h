// The UCX (ucp) implementation of krul::Transport.
//
// One ucp context and one worker per Transport. A region is a ucp_mem_map
// handle with a packed remote key; a descriptor carries (region id, base
// address, length, expiry, packed rkey); endpoints are created from the
// peer's worker address (bytes carried by the control plane). UCX picks the
// wire: shared memory (posix / sysv / cma) between processes of one host,
// TCP across hosts or when forced, RDMA where present.
//
// Protocols (UcxTransportOptions::protocol), chosen per transfer:
//  - direct: when UCX maps the peer's region into this process (same host,
//    region from AllocateRegion; ucp_rkey_ptr succeeds), a transfer is a
//    plain memcpy by the posting thread, done when Post returns. One-sided.
//  - messages: active messages served by the peer's worker, which checks
//    each request against the grant it names: every Describe records a grant
//    (byte range, expiry) under a random id that the descriptor carries, so
//    a revoked grant (MemoryRegion::Revoke, or its region destroyed) is
//    ABORTED, an expired one PERMISSION_DENIED and a range outside it
//    OUT_OF_RANGE, checked by the server whatever the client does. Payloads
//    above UCX's rendezvous threshold move zero-copy (TCP put_zcopy, cma,
//    RDMA). Writes are acknowledged once the bytes are in the peer's memory.
//  - rma: ucp_get_nbx / ucp_put_nbx + ucp_ep_flush_nbx. One-sided, but the
//    target cannot vet requests, and over TCP UCX 1.13 emulates RMA with
//    small messages (slow), so it is opt-in.
//
// UCX settings: the user's UCX_* environment variables always win. Options
// only fill in settings the environment leaves unset (as NIXL does). The
// transport also defaults UCX_POSIX_ERROR_HANDLING / UCX_SYSV_ERROR_HANDLING
// to "y" (via setenv without overwrite, since UCX 1.13 reads these
// memory-domain settings only from the environment): endpoints use peer
// failure detection, and without it UCX would not pick shared memory.
//
// Progress: with `progress_thread` a background thread sleeps on the
// worker's event fd and progresses it when something arrives. A process that
// serves regions (the kvstore) needs it: the messages protocol, TCP and
// connection wire-up all need the target's worker to run. Waiting threads
// also progress the worker themselves. All ucp calls on a worker are
// serialized by one mutex.
//
// Limits: with the direct and rma protocols a revoked grant is not detected
// (a read may see old bytes over shared memory; over TCP UCX does not check
// remote keys), so the kvstore should keep regions alive for the process
// lifetime and carve blocks out of them. Range and expiry are always checked
// by the importing side as well.
#ifndef KRUL_TRANSPORT_UCX_TRANSPORT_H_
#define KRUL_TRANSPORT_UCX_TRANSPORT_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "krul/transport/transport.h"

namespace krul {

struct UcxTransportOptions {
  enum class Protocol {
    kAuto,      // direct where the peer's region is mapped, else kMessages
    kMessages,  // active messages served (and checked) by the peer
    kRma,       // one-sided ucp_get_nbx / ucp_put_nbx
  };
  // See the file comment. Default: kAuto.
  Protocol protocol = Protocol::kAuto;

  // Restrict UCX to TCP: sets UCX_TLS=tcp and UCX_NET_DEVICES=`tcp_device`,
  // each only if the environment does not set it. Default: false (UCX picks,
  // i.e. shared memory between processes of one host).
  bool force_tcp = false;
  // Network device for force_tcp. Default: "lo" (loopback tests).
  std::string tcp_device = "lo";

  // Extra UCX settings as (name without the UCX_ prefix, value), e.g.
  // {"RNDV_THRESH", "64k"}; applied only when UCX_<name> is not in the
  // environment. Interface settings go by field name without the transport
  // prefix ({"TX_SEG_SIZE", "1m"} for UCX_TCP_TX_SEG_SIZE) and reach every
  // interface with that field. INVALID_ARGUMENT from NewUcxTransport if UCX
  // rejects a value; UCX only warns about names no component knows.
  // Default: none. (Krul itself sets TX_SEG_SIZE = RX_SEG_SIZE = 256k unless
  // UCX_TCP_TX_SEG_SIZE / UCX_TCP_RX_SEG_SIZE are set: cheaper TCP.)
  std::vector<std::pair<std::string, std::string>> ucx_settings;

  // Endpoints detect a failed peer (UCP_ERR_HANDLING_MODE_PEER, with UCX
  // keepalive), so transfers to a dead kvstore fail with UNAVAILABLE instead
  // of hanging. Costs: UCX 1.13 then does not use cma, so on one host the
  // messages protocol (regions from RegisterRegion, or kMessages) moves
  // large payloads in 8 KiB shared-memory fragments (~0.3 GB/s instead of
  // memcpy speed; regions from AllocateRegion are unaffected: direct
  // protocol). false: cma rendezvous, but a dead peer may hang transfers on
  // shared memory (TCP resets are still reported). Default: true.
  bool detect_peer_failure = true;

  // Runs a background progress thread (see the file comment). Default: true.
  bool progress_thread = true;

  // Largest single UCX operation (messages and rma protocols); longer
  // segments are split so that several operations are in flight at once.
  // Default: 4 MiB. Must be > 0.
  size_t max_op_bytes = size_t{4} << 20;

  // INVALID_ARGUMENT naming the field when an option is out of range.
  absl::Status Validate() const;
};

// Creates a UCX transport. INVALID_ARGUMENT for bad options or a UCX setting
// that UCX rejects; UNAVAILABLE when UCX cannot initialize (no usable
// transport, e.g. UCX_TLS names one that is absent).
absl::StatusOr<std::unique_ptr<Transport>> NewUcxTransport(const UcxTransportOptions& options = {});

}  // namespace krul

#endif  // KRUL_TRANSPORT_UCX_TRANSPORT_H_
