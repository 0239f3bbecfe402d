#include "worker/session/kvstore_conversation_store.h"

#include <string_view>

#include "absl/strings/str_cat.h"
#include "krul/kvclient/kvstore_client.h"
#include "krul/transport/transport.h"
#include "krul/transport/ucx_transport.h"

namespace krul::worker {
namespace {

class KvstoreConversationStore final : public ConversationStore {
 public:
  KvstoreConversationStore(std::unique_ptr<Transport> transport,
                           std::unique_ptr<KvStoreClient> restore_client,
                           std::unique_ptr<KvStoreClient> persist_client,
                           std::vector<std::string> addresses)
      : transport_(std::move(transport)),
        restore_client_(std::move(restore_client)),
        persist_client_(std::move(persist_client)),
        addresses_(std::move(addresses)) {}

  absl::StatusOr<v1::Manifest> LookupLatest(const std::string& tenant,
                                            const std::string& conversation_id,
                                            absl::Time) override {
    v1::ConversationKey key;
    key.set_tenant(tenant);
    key.set_conversation_id(conversation_id);
    return restore_client_->Lookup(key, /*latest=*/true);
  }

  absl::Status ReadBlocks(const v1::Manifest& manifest, std::span<const uint32_t> indices,
                          const BlockSink& sink, absl::Time) override {
    if (indices.empty()) return absl::OkStatus();
    // The client verifies each block before the callback sees it.
    return restore_client_->Read(
        manifest, indices, [&sink](uint32_t index, std::string_view encoded, const DecodedBlock&) {
          return sink(index, std::string(encoded));
        });
  }

  absl::Status Write(const v1::Manifest& manifest, std::vector<std::string> blocks,
                     absl::Time) override {
    std::vector<std::string_view> views(blocks.begin(), blocks.end());
    auto committed = persist_client_->Put(manifest, views);
    return committed.ok() ? absl::OkStatus() : committed.status();
  }

  absl::Status Delete(const std::string& tenant, const std::string& conversation_id,
                      absl::Time) override {
    v1::ConversationKey key;
    key.set_tenant(tenant);
    key.set_conversation_id(conversation_id);
    auto deleted = persist_client_->Delete(key, /*all_turns=*/true);
    return deleted.ok() ? absl::OkStatus() : deleted.status();
  }

  absl::Status Health(absl::Time) override {
    for (const std::string& a : addresses_) {
      auto h = restore_client_->Health(a);
      if (!h.ok()) return h.status();
      if (h->status() != v1::HealthResponse::SERVING) {
        return absl::UnavailableError(absl::StrCat("kvstore ", a, " is not serving"));
      }
    }
    return absl::OkStatus();
  }

 private:
  // Declared first, so destroyed last: the clients' UCX block transport
  // refers to it.
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<KvStoreClient> restore_client_;
  std::unique_ptr<KvStoreClient> persist_client_;
  std::vector<std::string> addresses_;
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
  KvStoreClientOptions restore;
  restore.addresses = options.addresses;
  restore.replication = options.replication;
  restore.rpc_timeout = options.restore_deadline;
  restore.transfer_timeout = options.restore_deadline;
  restore.max_attempts = 1;  // a restore that has to retry is already late
  restore.block_transport = block_transport;
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
  return std::unique_ptr<ConversationStore>(
      new KvstoreConversationStore(std::move(transport), *std::move(restore_client),
                                   *std::move(persist_client), options.addresses));
}

}  // namespace krul::worker
