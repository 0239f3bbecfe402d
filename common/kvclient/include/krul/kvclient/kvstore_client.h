// KvStoreClient: how workers (and tools) talk to a set of kvstore shards.
//
// Sharding: each conversation (tenant, conversation id) lives on the R
// shards that rank highest by rendezvous hashing over the address list
// (R = replication). Adding or removing a shard moves only the keys whose
// top-R set changes: about 1/(n+1) of them when an (n+1)-th shard joins.
//
// Every call has a deadline per attempt; UNAVAILABLE and DEADLINE_EXCEEDED
// are retried with exponential backoff (and jitter) up to max_attempts per
// shard, then the next replica is tried. One gRPC channel per address is
// created on first use and reused by every call.
//
// Integrity: blocks are verified against the manifest (XXH3 checksum, size,
// layer, token range) as they arrive; a block that fails is never handed to
// the caller: the client tries the next replica, and reports DATA_LOSS when
// no replica has a good copy.
//
// Data plane: bulk block bytes move through a BlockTransport. The default
// is inline gRPC streaming (WriteBlocks / ReadBlocks). With a krul::Transport
// (UCX, see krul/transport.h) and a server that offers it, blocks move
// one-sidedly over UCX (shared memory / TCP / RDMA) instead; versions up to
// inline_put_bytes still go in one unary Put.
//
// Status codes: those of the server (see proto/krul/v1/kvstore.proto), plus
// INVALID_ARGUMENT for bad options or arguments, UNAVAILABLE when no replica
// could be reached, DATA_LOSS when no replica returned a good copy.
//
// Security: channels use TLS (mutual TLS with a client certificate) when
// `tls.enabled`, and every call carries `bearer_token` when set (the
// kvstore then takes the tenant from the token: keys must name that tenant).
// Plaintext is accepted by Validate only when every address is loopback, or
// with allow_insecure (krul/rpc/credentials.h).
//
// Reconnects: after a shard restart a channel retries its connection after
// reconnect_backoff_initial, growing 1.6x up to reconnect_backoff_max, and a
// background thread keeps every channel polled and connecting, so a store
// that is back is used again within about reconnect_backoff_max (gRPC alone
// noticed only every 5 s; see channel_watcher.h).
//
// Thread-safe: one client may serve all threads of a process.
#ifndef KRUL_KVCLIENT_KVSTORE_CLIENT_H_
#define KRUL_KVCLIENT_KVSTORE_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "krul/kvformat/kv_block.h"
#include "krul/rpc/credentials.h"
#include "krul/v1/kvstore.grpc.pb.h"

namespace krul {

class Transport;
namespace kvclient_internal {
class ChannelWatcher;
}

// Called once per block, in the order requested, with bytes that passed
// verification: `encoded` is the whole block, `block` its decoded header and
// a view of its payload (both valid only during the call). Returning an
// error stops the read and is returned by it.
using BlockCallback = std::function<absl::Status(uint32_t index, std::string_view encoded,
                                                 const DecodedBlock& block)>;

// Raw (unverified) bytes of one block as a transport delivers them, and,
// when the transport hashed the payload (the bytes after the 64-byte
// header) as it landed, that BlockChecksum: the client then checks it
// instead of reading the bytes a second time. It must be the hash of exactly
// `encoded`'s payload (a wrapper that changes the bytes passes nullopt).
using RawBlockCallback = std::function<absl::Status(uint32_t index, std::string_view encoded,
                                                    std::optional<uint64_t> payload_xxh3)>;

// The data plane seam: moves encoded block bytes between the client and one
// shard. Implementations: inline gRPC (NewGrpcBlockTransport) and UCX
// (NewUcxBlockTransport); tests wrap one to inject faults. Thread-safe.
class BlockTransport {
 public:
  virtual ~BlockTransport() = default;

  // "grpc" or "ucx": the BeginPutRequest.transport value this plane needs.
  virtual std::string_view name() const = 0;

  // Writes blocks[i] into reservation `reservation` (from a BeginPut sent
  // with transport name()) on the shard behind `stub` at `address`.
  virtual absl::Status Write(v1::KvStore::StubInterface& stub, const std::string& address,
                             const v1::BeginPutResponse& reservation,
                             std::span<const std::string_view> blocks, absl::Time deadline) = 0;

  // Reads `indices` of committed version `manifest.key()` from the shard,
  // calling `on_block` for each block in order (pipelined: block i is handed
  // over while later ones are still in flight where the plane allows).
  virtual absl::Status Read(v1::KvStore::StubInterface& stub, const std::string& address,
                            const v1::Manifest& manifest, std::span<const uint32_t> indices,
                            const RawBlockCallback& on_block, absl::Time deadline) = 0;
};

// Inline gRPC streaming data plane; chunk_bytes per message.
std::unique_ptr<BlockTransport> NewGrpcBlockTransport(uint64_t chunk_bytes = uint64_t{4} << 20);

// UCX data plane over `transport` (not owned; must outlive the result):
// one endpoint per server address, reused.
std::unique_ptr<BlockTransport> NewUcxBlockTransport(Transport* transport);

struct KvStoreClientOptions {
  // "host:port" of every shard. Required, no duplicates.
  std::vector<std::string> addresses;
  // Shards holding each conversation; 1 <= replication <= addresses.size().
  // Default: 1.
  int replication = 1;
  // A put succeeds when this many replicas committed; 0 means all
  // `replication` of them. Default: 0.
  int min_write_replicas = 0;

  // Deadline per attempt of a control RPC, and of a whole data transfer.
  // Defaults: 10 s and 120 s.
  absl::Duration rpc_timeout = absl::Seconds(10);
  absl::Duration transfer_timeout = absl::Seconds(120);
  // Attempts per shard for retryable failures; backoff doubles from
  // initial_backoff up to max_backoff, with +-25% jitter. Defaults: 3,
  // 20 ms, 1 s.
  int max_attempts = 3;
  absl::Duration initial_backoff = absl::Milliseconds(20);
  absl::Duration max_backoff = absl::Seconds(1);

  // Versions at most this large are written with one unary Put. Default:
  // 1 MiB (must not exceed the server's max_inline_bytes).
  uint64_t inline_put_bytes = uint64_t{1} << 20;

  // TLS of the channels (CA, client certificate for mTLS, server name).
  // Default: plaintext.
  rpc::ClientTlsOptions tls;
  // Accept plaintext to non-loopback addresses. Default: false.
  bool allow_insecure = false;
  // Sent as `authorization: Bearer <token>` on every call; empty: none.
  // Default: none.
  std::string bearer_token;

  // Channel reconnection after a failure (see the file comment), and the
  // shortest time a connection attempt (TCP + TLS handshake) is given.
  // Defaults: 20 ms, 250 ms, 2 s. (gRPC's own: 1 s, 120 s, 20 s.)
  absl::Duration reconnect_backoff_initial = absl::Milliseconds(20);
  absl::Duration reconnect_backoff_max = absl::Milliseconds(250);
  absl::Duration connect_timeout = absl::Seconds(2);
  // Keep every channel polled and connecting from a background thread (see
  // the file comment). false: only calls drive reconnection, and a
  // restarted shard may go unnoticed for up to gRPC's 5 s backup poll.
  // Default: true.
  bool keep_connected = true;

  // The bulk data plane. Null: inline gRPC streaming with 4 MiB chunks.
  // Shared so tests can keep a handle on a fault-injecting wrapper.
  std::shared_ptr<BlockTransport> block_transport;

  // INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;
};

// A pin held on one shard (see KvStoreClient::Pin).
struct PinHandle {
  std::string address;
  uint64_t lease_id = 0;
  absl::Time expires;
};

class KvStoreClient {
 public:
  // INVALID_ARGUMENT for bad options. Connects lazily.
  static absl::StatusOr<std::unique_ptr<KvStoreClient>> Create(KvStoreClientOptions options);

  ~KvStoreClient();

  // All addresses, best first, for a conversation (rendezvous ranking).
  std::vector<std::string> RankShards(std::string_view tenant,
                                      std::string_view conversation_id) const;
  // The first `replication` of RankShards: where the conversation lives.
  std::vector<std::string> ReplicasFor(std::string_view tenant,
                                       std::string_view conversation_id) const;

  // Stores a version on its replicas. `manifest` names the key, model,
  // layers, plan and ranges; when manifest.blocks is empty the client fills
  // it from `blocks` (encoded with krul/kv_block.h), otherwise it must list
  // exactly those blocks. `ttl`: idle TTL, zero for the server default.
  // Returns the manifest as committed (by the first replica).
  absl::StatusOr<v1::Manifest> Put(v1::Manifest manifest, std::span<const std::string_view> blocks,
                                   absl::Duration ttl = absl::ZeroDuration());

  // The committed manifest of `key` (or with `latest`, of the conversation's
  // highest turn) from the first replica that has it. NOT_FOUND when every
  // replica answered that it has none.
  absl::StatusOr<v1::Manifest> Lookup(const v1::ConversationKey& key, bool latest = false);

  // Reads `indices` (empty: all) of the version `manifest` describes,
  // verifying each block; `on_block` sees only verified blocks, in order.
  // Fails over to the next replica for the blocks not yet delivered.
  absl::Status Read(const v1::Manifest& manifest, std::span<const uint32_t> indices,
                    const BlockCallback& on_block);

  // Convenience: every block of `manifest`, encoded and verified.
  absl::StatusOr<std::vector<std::string>> ReadAll(const v1::Manifest& manifest);

  // Deletes `key` (or all its turns) on every replica; returns the largest
  // count any replica deleted. NOT_FOUND when no replica had it; UNAVAILABLE
  // when a replica could not be reached (others may have deleted).
  absl::StatusOr<int> Delete(const v1::ConversationKey& key, bool all_turns = false);

  // Pins `key` on the first replica that has it, for `lease` (zero: the
  // server's default), so it stays in that shard's DRAM while restoring.
  absl::StatusOr<PinHandle> Pin(const v1::ConversationKey& key,
                                absl::Duration lease = absl::ZeroDuration());
  absl::Status Unpin(const PinHandle& pin);

  // Stats and health of one shard (any address, also outside the list).
  absl::StatusOr<v1::StatsResponse> Stats(const std::string& address);
  absl::StatusOr<v1::HealthResponse> Health(const std::string& address);

  // The stub for `address` (created on first use), for tools and tests that
  // send raw requests.
  v1::KvStore::StubInterface& StubFor(const std::string& address);

 private:
  explicit KvStoreClient(KvStoreClientOptions options);

  // Runs `attempt`, retrying (with backoff) while `retryable(code)` holds,
  // at most max_attempts times; returns the last status. WithRetries
  // retries UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED.
  absl::Status WithRetries(const std::function<absl::Status()>& attempt);
  absl::Status WithRetriesIf(const std::function<absl::Status()>& attempt,
                             bool (*retryable)(absl::StatusCode));
  absl::StatusOr<v1::Manifest> PutOne(const std::string& address, const v1::Manifest& manifest,
                                      std::span<const std::string_view> blocks,
                                      uint64_t total_bytes, absl::Duration ttl);

  const KvStoreClientOptions options_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<v1::KvStore::StubInterface>> stubs_
      ABSL_GUARDED_BY(mu_);
  // Polls the channels in the background and reconnects them (see
  // channel_watcher.h); declared last, so it stops before the stubs go.
  std::unique_ptr<kvclient_internal::ChannelWatcher> watcher_;
};

}  // namespace krul

#endif  // KRUL_KVCLIENT_KVSTORE_CLIENT_H_
