// The ConversationStore backed by krul-kvstore through the kvstore client in
// common/ (krul/kvstore_client.h): sharding by rendezvous hashing over the
// addresses, verification of every block against the manifest, UCX data
// plane (inline gRPC when the kvstore offers no UCX), leases (Pin) on the
// version a restore reads.
//
// Deadlines. The client bounds each attempt by its own options rather than
// per call, so two clients are kept: the restore path's (lookups and block
// reads, one attempt bounded by `restore_deadline`: a slow or dead store
// costs at most that before the worker recomputes) and the persist path's
// (more patient, retried). The `deadline` arguments of ConversationStore
// are therefore approximate here.
#ifndef KRUL_SERVICES_WORKER_SESSION_KVSTORE_CONVERSATION_STORE_H_
#define KRUL_SERVICES_WORKER_SESSION_KVSTORE_CONVERSATION_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "krul/rpc/credentials.h"
#include "worker/session/conversation_store.h"

namespace krul::worker {

struct KvstoreStoreOptions {
  std::vector<std::string> addresses;  // "host:port" of every shard
  int replication = 1;
  absl::Duration restore_deadline = absl::Seconds(1);
  absl::Duration persist_deadline = absl::Seconds(10);
  // Move blocks over UCX (shared memory / TCP / RDMA; UCX's own UCX_TLS and
  // UCX_NET_DEVICES choose) instead of inline gRPC. When a shard offers no
  // UCX data plane (a kvstore started without --ucx), the store falls back
  // to inline gRPC for every transfer, with a warning, as soon as the
  // kvstore first answers. Default: true.
  bool ucx = true;
  // TLS, bearer token and the plaintext rule of the client
  // (krul/kvclient/kvstore_client.h).
  rpc::ClientTlsOptions tls;
  std::string bearer_token;
  bool allow_insecure = false;
};

// Connects lazily: an unreachable store is not an error here (requests fall
// back to recompute and count it). INVALID_ARGUMENT for bad options;
// UNAVAILABLE when UCX was asked for and cannot start.
absl::StatusOr<std::unique_ptr<ConversationStore>> NewKvstoreConversationStore(
    const KvstoreStoreOptions& options);

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SESSION_KVSTORE_CONVERSATION_STORE_H_
