#include "worker/session/kvstore_conversation_store.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "krul/base/log.h"
#include "krul/kvclient/kvstore_client.h"
#include "krul/transport/transport.h"
#include "krul/transport/ucx_transport.h"

namespace krul::worker {
namespace {

// The two clients (restore path, persist path) over one data plane.
struct Clients {
  std::unique_ptr<KvStoreClient> restore;
  std::unique_ptr<KvStoreClient> persist;
};

// Builds both clients over `block_transport` (null: inline gRPC).
absl::StatusOr<std::shared_ptr<const Clients>> MakeClients(
    const KvstoreStoreOptions& options, std::shared_ptr<BlockTransport> block_transport) {
  KvStoreClientOptions restore;
  restore.addresses = options.addresses;
  restore.replication = options.replication;
  restore.rpc_timeout = options.restore_deadline;
  restore.transfer_timeout = options.restore_deadline;
  restore.max_attempts = 1;  // a restore that has to retry is already late
  restore.block_transport = std::move(block_transport);
  restore.tls = options.tls;
  restore.bearer_token = options.bearer_token;
  restore.allow_insecure = options.allow_insecure;
  auto restore_client = KvStoreClient::Create(restore);
  if (!restore_client.ok()) return restore_client.status();

  KvStoreClientOptions persist = restore;
  persist.rpc_timeout = options.persist_deadline;
  persist.transfer_timeout = options.persist_deadline;
  persist.max_attempts = 3;
  auto persist_client = KvStoreClient::Create(persist);
  if (!persist_client.ok()) return persist_client.status();
  auto clients = std::make_shared<Clients>();
  clients->restore = *std::move(restore_client);
  clients->persist = *std::move(persist_client);
  return std::shared_ptr<const Clients>(std::move(clients));
}

class KvstoreConversationStore final : public ConversationStore {
 public:
  KvstoreConversationStore(const KvstoreStoreOptions& options, std::unique_ptr<Transport> transport,
                           std::shared_ptr<const Clients> clients)
      : options_(options), transport_(std::move(transport)), clients_(std::move(clients)) {
    data_plane_ = transport_ != nullptr ? "ucx" : "grpc";
  }

  absl::StatusOr<v1::Manifest> LookupLatest(const std::string& tenant,
                                            const std::string& conversation_id,
                                            absl::Time) override {
    v1::ConversationKey key;
    key.set_tenant(tenant);
    key.set_conversation_id(conversation_id);
    return current()->restore->Lookup(key, /*latest=*/true);
  }

  absl::Status ReadBlocks(const v1::Manifest& manifest, std::span<const uint32_t> indices,
                          const BlockSink& sink, absl::Time) override {
    if (indices.empty()) return absl::OkStatus();
    ResolveDataPlane();
    // The client verifies each block before the callback sees it.
    return current()->restore->Read(
        manifest, indices, [&sink](uint32_t index, std::string_view encoded, const DecodedBlock&) {
          return sink(index, std::string(encoded));
        });
  }

  absl::Status Write(const v1::Manifest& manifest, std::vector<std::string> blocks,
                     absl::Time) override {
    ResolveDataPlane();
    std::vector<std::string_view> views(blocks.begin(), blocks.end());
    auto committed = current()->persist->Put(manifest, views);
    return committed.ok() ? absl::OkStatus() : committed.status();
  }

  absl::Status Delete(const std::string& tenant, const std::string& conversation_id,
                      absl::Time) override {
    v1::ConversationKey key;
    key.set_tenant(tenant);
    key.set_conversation_id(conversation_id);
    auto deleted = current()->persist->Delete(key, /*all_turns=*/true);
    return deleted.ok() ? absl::OkStatus() : deleted.status();
  }

  absl::Status Health(absl::Time) override {
    std::shared_ptr<const Clients> clients = current();
    for (const std::string& a : options_.addresses) {
      auto h = clients->restore->Health(a);
      if (!h.ok()) return h.status();
      if (h->status() != v1::HealthResponse::SERVING) {
        return absl::UnavailableError(absl::StrCat("kvstore ", a, " is not serving"));
      }
    }
    // The store answers: settle the data plane now rather than in the
    // first restore.
    ResolveDataPlane();
    return absl::OkStatus();
  }

  absl::StatusOr<StorePin> Pin(const v1::ConversationKey& key, absl::Duration lease,
                               absl::Time) override {
    // The kvstore leases in whole seconds.
    auto pin = current()->restore->Pin(key, absl::Ceil(lease, absl::Seconds(1)));
    if (!pin.ok()) return pin.status();
    return StorePin{pin->address, pin->lease_id, pin->expires};
  }

  absl::Status Unpin(const StorePin& pin, absl::Time) override {
    if (pin.lease_id == 0) return absl::OkStatus();
    return current()->restore->Unpin(PinHandle{pin.address, pin.lease_id, pin.expires});
  }

  std::string data_plane() const override {
    absl::MutexLock lock(&mu_);
    return data_plane_;
  }

 private:
  std::shared_ptr<const Clients> current() const {
    absl::MutexLock lock(&mu_);
    return clients_;
  }

  // UCX is the data plane unless a shard does not offer it: then every
  // transfer moves inline over gRPC (a shard cannot take a UCX put or
  // grant a UCX read without it). Asked once, when the store first answers
  // (ExchangeEndpoints offering both; the answer names the one to use).
  void ResolveDataPlane() {
    if (transport_ == nullptr || resolved_.load()) return;
    absl::MutexLock resolving(&resolve_mu_);
    if (resolved_.load()) return;
    std::shared_ptr<const Clients> clients = current();
    std::string without_ucx;
    for (const std::string& a : options_.addresses) {
      v1::ExchangeEndpointsRequest req;
      req.add_transports("ucx");
      req.add_transports("grpc");
      v1::ExchangeEndpointsResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.restore_deadline));
      if (!clients->restore->StubFor(a).ExchangeEndpoints(&ctx, req, &resp).ok()) {
        return;  // not reachable yet: ask again next time
      }
      if (resp.transport() != "ucx" && without_ucx.empty()) without_ucx = a;
    }
    if (!without_ucx.empty()) {
      auto grpc_clients = MakeClients(options_, nullptr);
      if (!grpc_clients.ok()) {
        KRUL_LOG(ERROR) << "krul-worker: kvstore " << without_ucx
                        << " offers no UCX data plane and the gRPC one cannot be set up: "
                        << grpc_clients.status();
        return;
      }
      KRUL_LOG(WARNING) << "krul-worker: kvstore " << without_ucx
                        << " offers no UCX data plane (start it with --ucx); KV blocks move "
                           "inline over gRPC";
      absl::MutexLock lock(&mu_);
      clients_ = *std::move(grpc_clients);
      data_plane_ = "grpc (the kvstore offers no UCX)";
    }
    resolved_ = true;
  }

  const KvstoreStoreOptions options_;
  // Declared first, so destroyed last: the UCX clients' block transport
  // refers to it.
  std::unique_ptr<Transport> transport_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const Clients> clients_ ABSL_GUARDED_BY(mu_);
  std::string data_plane_ ABSL_GUARDED_BY(mu_);
  absl::Mutex resolve_mu_;
  std::atomic<bool> resolved_{false};
};

}  // namespace

absl::StatusOr<std::unique_ptr<ConversationStore>> NewKvstoreConversationStore(
    const KvstoreStoreOptions& options) {
  std::unique_ptr<Transport> transport;
  std::shared_ptr<BlockTransport> block_transport;
  if (options.ucx) {
    auto t = NewUcxTransport();
    if (!t.ok()) return t.status();
    transport = *std::move(t);
    block_transport = NewUcxBlockTransport(transport.get());
  }
  auto clients = MakeClients(options, std::move(block_transport));
  if (!clients.ok()) return clients.status();
  return std::unique_ptr<ConversationStore>(
      new KvstoreConversationStore(options, std::move(transport), *std::move(clients)));
}

}  // namespace krul::worker
