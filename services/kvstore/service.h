// KvStoreService: the gRPC face of the Store (proto/krul/v1/kvstore.proto).
// Each method decodes and validates the request, calls the Store, and maps
// absl::Status to grpc::Status once (the codes are the same numbers). It
// also hands out UCX grants when the server runs a Transport: staging
// buffers of a reservation (BeginPut with transport "ucx") and committed
// blocks (GrantRead) are registered with the transport and described to the
// client, which then moves the bytes one-sidedly.
//
// Requests carrying fields this server does not know are refused with
// INVALID_ARGUMENT: silently ignoring a newer client's field (say, a
// checksum mode) would store something other than what the client meant.
//
// Authentication and tenant scoping (see tenant_auth.h): every RPC but
// Health first authenticates its caller. With bearer tokens the tenant comes
// from the credential: a request's key (or manifest key) must name that
// tenant or leave it empty (then it is filled in); another tenant is
// PERMISSION_DENIED. Put ids, lease ids and read grants of another tenant
// are NOT_FOUND, as if they did not exist. UNAUTHENTICATED without a valid
// token. In trusting mode (no tokens file) the request names the tenant.
//
// Grants are bound to the caller: a UCX grant covers exactly the blocks of
// the caller's own request, expires (BeginPut: with the reservation;
// GrantRead: lease_seconds, at most max_read_grant) and is revoked when the
// put commits or aborts and on ReleaseRead; the serving side of the messages
// protocol checks range, expiry and revocation on every request
// (krul/transport/ucx_transport.h). The one-sided protocols (shared memory
// mapping, RMA) are checked by the client only: see docs/security.md.
//
// Thread-safe: gRPC calls the methods from its thread pool.
#ifndef KRUL_SERVICES_KVSTORE_SERVICE_H_
#define KRUL_SERVICES_KVSTORE_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "krul/transport/transport.h"
#include "krul/v1/kvstore.grpc.pb.h"
#include "kvstore/storage/byte_buffer.h"
#include "kvstore/storage/store.h"
#include "kvstore/storage/transport_arena.h"
#include "kvstore/tenant_auth.h"

namespace krul::kvstore {

class KvStoreMetrics;

struct ServiceOptions {
  GrantScope grant_scope = GrantScope::kBlock;
  uint64_t max_inline_bytes = uint64_t{4} << 20;
  uint64_t chunk_bytes = uint64_t{4} << 20;
  // How long a GrantRead stays valid when the request does not say.
  absl::Duration default_read_grant = absl::Seconds(30);
  absl::Duration max_read_grant = absl::Minutes(10);
};

class KvStoreService final : public v1::KvStore::Service {
 public:
  // `store`, `clock` and `metrics` are not owned; `transport` (not owned,
  // may be null) enables the UCX data plane. All must outlive the service.
  // `arena` (not owned, may be null) is where the store's blocks live when
  // UCX is on; it provides the chunk grants of GrantScope::kChunk. `auth`
  // (not owned, may be null: trusting mode) authenticates callers.
  KvStoreService(Store* store, Clock* clock, KvStoreMetrics* metrics, Transport* transport,
                 const ServiceOptions& options, const TransportArena* arena = nullptr,
                 const TenantAuth* auth = nullptr);
  ~KvStoreService() override;

  // Reports DRAINING from Health (the server is shutting down).
  void SetDraining();

  // Waits until no RPC is running (or `timeout` passes); true when idle.
  bool WaitForIdle(absl::Duration timeout);

  // Revokes UCX grants past their expiry (called by the server's
  // maintenance loop).
  void ExpireGrants();

  grpc::Status BeginPut(grpc::ServerContext* ctx, const v1::BeginPutRequest* req,
                        v1::BeginPutResponse* resp) override;
  grpc::Status CommitPut(grpc::ServerContext* ctx, const v1::CommitPutRequest* req,
                         v1::CommitPutResponse* resp) override;
  grpc::Status AbortPut(grpc::ServerContext* ctx, const v1::AbortPutRequest* req,
                        v1::AbortPutResponse* resp) override;
  grpc::Status Lookup(grpc::ServerContext* ctx, const v1::LookupRequest* req,
                      v1::LookupResponse* resp) override;
  grpc::Status Get(grpc::ServerContext* ctx, const v1::GetRequest* req,
                   v1::GetResponse* resp) override;
  grpc::Status Put(grpc::ServerContext* ctx, const v1::PutRequest* req,
                   v1::PutResponse* resp) override;
  grpc::Status WriteBlocks(grpc::ServerContext* ctx, grpc::ServerReader<v1::BlockChunk>* reader,
                           v1::WriteBlocksResponse* resp) override;
  grpc::Status ReadBlocks(grpc::ServerContext* ctx, const v1::ReadBlocksRequest* req,
                          grpc::ServerWriter<v1::BlockChunk>* writer) override;
  grpc::Status GrantRead(grpc::ServerContext* ctx, const v1::GrantReadRequest* req,
                         v1::GrantReadResponse* resp) override;
  grpc::Status ReleaseRead(grpc::ServerContext* ctx, const v1::ReleaseReadRequest* req,
                           v1::ReleaseReadResponse* resp) override;
  grpc::Status Delete(grpc::ServerContext* ctx, const v1::DeleteRequest* req,
                      v1::DeleteResponse* resp) override;
  grpc::Status Pin(grpc::ServerContext* ctx, const v1::PinRequest* req,
                   v1::PinResponse* resp) override;
  grpc::Status Unpin(grpc::ServerContext* ctx, const v1::UnpinRequest* req,
                     v1::UnpinResponse* resp) override;
  grpc::Status Stats(grpc::ServerContext* ctx, const v1::StatsRequest* req,
                     v1::StatsResponse* resp) override;
  grpc::Status Health(grpc::ServerContext* ctx, const v1::HealthRequest* req,
                      v1::HealthResponse* resp) override;
  grpc::Status ExchangeEndpoints(grpc::ServerContext* ctx, const v1::ExchangeEndpointsRequest* req,
                                 v1::ExchangeEndpointsResponse* resp) override;

 private:
  // Registered memory handed to a client, revoked on release or expiry.
  // Movable; destroying it first revokes its descriptors (so the serving
  // side refuses them at once), then releases the regions and the memory.
  struct Grant {
    Grant() = default;
    Grant(Grant&& other) noexcept;
    Grant& operator=(Grant&& other) noexcept;
    ~Grant();

    std::string tenant;  // Of the caller it was issued to (empty: trusting mode).
    // Descriptors issued (region, bytes), for MemoryRegion::Revoke.
    std::vector<std::pair<const MemoryRegion*, std::string>> descriptors;
    std::vector<std::unique_ptr<MemoryRegion>> regions;
    std::vector<std::shared_ptr<const void>> keepalive;  // The memory behind them.
    absl::Time expires;
  };

  // One block's memory as the data plane sees it.
  struct BlockMemory {
    char* data;
    uint64_t size;
    const MemoryRegion* region;  // Null: heap memory, registered per grant.
    uint64_t region_offset;
    std::shared_ptr<const void> keepalive;
  };
  // Sets transport_descriptor and remote_offset of targets[i] for
  // blocks[i]; regions registered here and the blocks' memory are kept in
  // `grant`.
  absl::Status DescribeBlocks(const std::vector<BlockMemory>& blocks, absl::Time expires,
                              Grant* grant, std::vector<v1::TransferTarget*>& targets);
  // Block-scope descriptors for blocks that all have a region: one per run
  // of adjacent blocks; recorded in `grant` for revocation.
  absl::Status DescribeRuns(const std::vector<BlockMemory>& blocks, absl::Time expires,
                            Grant* grant, std::vector<v1::TransferTarget*>& targets);

  // Authenticates the caller of `ctx` (unless ctx is null: Health), runs
  // `body(caller)`, records krul_kvstore_requests_total / op_seconds for
  // `op`.
  template <typename Body>
  grpc::Status Handle(const grpc::ServerContext* ctx, const char* op, Body body);

  void DropPutGrant(uint64_t put_id);

  Store* const store_;
  Clock* const clock_;
  KvStoreMetrics* const metrics_;
  Transport* const transport_;
  const ServiceOptions options_;
  const TransportArena* const arena_;
  const TenantAuth* const auth_;  // Null: trusting mode.

  absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<uint64_t, Grant> put_grants_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Grant> read_grants_ ABSL_GUARDED_BY(mu_);
  uint64_t next_grant_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_SERVICE_H_
