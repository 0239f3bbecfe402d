// An in-process Transport for tests of the layers above the data plane
// (kvstore service and client): transfers are memcpy between regions of
// FakeTransport instances in the same process, found through a process-wide
// registry keyed by address. Unlike UCX it checks every access on the
// "server" side too, so it reports ABORTED for a revoked grant reliably.
//
// Test controls beyond Transport: fail upcoming transfers with a chosen
// status, make the peer unreachable, count bytes.
//
// Thread-safe like every Transport. The copy happens synchronously in Post;
// the Transfer stays kInFlight until Poll or Wait reports the result, as with
// UCX.
#ifndef KRUL_TRANSPORT_FAKE_TRANSPORT_H_
#define KRUL_TRANSPORT_FAKE_TRANSPORT_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "krul/transport/transport.h"

namespace krul {

class FakeTransport : public Transport {
 public:
  // Creates a fake registered in the process-wide registry until destroyed.
  static std::unique_ptr<FakeTransport> Create();

  // The next `count` transfers posted through this Transport (as the
  // client) fail with `status` (must be non-OK) without moving bytes.
  virtual void FailNextTransfers(int count, absl::Status status) = 0;

  // While true, Connect() to this Transport and transfers against its
  // regions fail with UNAVAILABLE (a crashed or partitioned server).
  virtual void SetUnreachable(bool unreachable) = 0;

  // Bytes moved by transfers this Transport posted, per direction.
  virtual uint64_t bytes_read() const = 0;
  virtual uint64_t bytes_written() const = 0;
};

}  // namespace krul

#endif  // KRUL_TRANSPORT_FAKE_TRANSPORT_H_
