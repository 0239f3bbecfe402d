// A connected TCP socket pair over 127.0.0.1: the raw-socket baseline that
// krul-bench-kvstore and krul-bench-transport compare their data planes with.
// Built only without KRUL_ENGINE_ONLY (with the benchmarks that use it).
#ifndef KRUL_BENCH_KVSTORE_LOOPBACK_TCP_H_
#define KRUL_BENCH_KVSTORE_LOOPBACK_TCP_H_

#include "absl/status/statusor.h"

namespace krul::bench {

// Both ends of one loopback connection; the caller owns (and closes) the fds.
struct LoopbackTcpPair {
  int sender = -1;
  int receiver = -1;
};

// Listens on an ephemeral loopback port, connects to it and accepts.
// Errors: kInternal when the listener cannot be bound or put to listen;
// kUnavailable when connecting to it fails. Nothing is left open on error.
absl::StatusOr<LoopbackTcpPair> ConnectLoopbackTcp();

}  // namespace krul::bench

#endif  // KRUL_BENCH_KVSTORE_LOOPBACK_TCP_H_
