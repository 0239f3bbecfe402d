#include "algorithms/restore_bench_store.h"

#include <cstdio>
#include <utility>

#include "absl/time/time.h"

#ifdef KRUL_BENCH_WITH_KVSTORE
#include "krul/transport/ucx_transport.h"
#include "kvstore/server.h"
#include "worker/session/kv_blocks.h"
#include "worker/session/kvstore_conversation_store.h"
#endif

namespace krul::bench {
namespace {

class InProcessBenchStore final : public BenchStore {
 public:
  explicit InProcessBenchStore(std::unique_ptr<InProcessKvStore> store)
      : store_(std::move(store)) {}
  std::string Name() const override { return "in-process"; }
  absl::Status Put(const std::string& key, CompressedKv kv) override {
    store_->Put(key, std::move(kv));
    return absl::OkStatus();
  }
  absl::StatusOr<std::unique_ptr<KvSource>> Open(const std::string& key,
                                                 const std::vector<LoadStep>&) override {
    return store_->Open(key);
  }
  absl::Status Erase(const std::string& key) override { return store_->Erase(key); }

 private:
  std::unique_ptr<InProcessKvStore> store_;
};

#ifdef KRUL_BENCH_WITH_KVSTORE
// One krul-kvstore server in this process and the worker's client of it.
class KvstoreBenchStore final : public BenchStore {
 public:
  static absl::StatusOr<std::unique_ptr<BenchStore>> Start(const KvShape& shape, bool tcp,
                                                           uint64_t capacity_bytes) {
    UcxTransportOptions uo;
    // force_tcp sets UCX_TLS / UCX_NET_DEVICES in the environment (unless
    // set), so the client's transport created below uses TCP as well.
    uo.force_tcp = tcp;
    auto server_transport = NewUcxTransport(uo);
    if (!server_transport.ok()) return server_transport.status();
    kvstore::ServerOptions so;
    so.host = "127.0.0.1";
    so.port = 0;
    so.metrics_port = -1;
    so.store.tiers = kvstore::TierMode::kDramOnly;
    so.store.dram_capacity_bytes = capacity_bytes;
    so.store.max_staging_bytes = capacity_bytes;
    so.store.default_ttl = absl::ZeroDuration();
    auto server = kvstore::KvStoreServer::Start(so, *std::move(server_transport));
    if (!server.ok()) return server.status();
    worker::KvstoreStoreOptions co;
    co.addresses = {(*server)->address()};
    co.ucx = true;
    // No fallback to recompute here: a slow read must count, not fail.
    co.restore_deadline = kDeadline;
    co.persist_deadline = kDeadline;
    auto client = worker::NewKvstoreConversationStore(co);
    if (!client.ok()) return client.status();
    if (auto h = (*client)->Health(absl::Now() + kDeadline); !h.ok()) return h;
    return std::unique_ptr<BenchStore>(
        new KvstoreBenchStore(shape, tcp, *std::move(server), *std::move(client)));
  }

  ~KvstoreBenchStore() override {
    client_.reset();  // before the server it talks to
    if (auto s = server_->Shutdown(); !s.ok()) {
      std::fprintf(stderr, "kvstore shutdown: %s\n", s.ToString().c_str());
    }
  }

  std::string Name() const override { return tcp_ ? "kvstore-ucx (tcp)" : "kvstore-ucx (shm)"; }

  absl::Status Put(const std::string& key, CompressedKv kv) override {
    v1::ConversationKey k;
    k.set_tenant(kTenant);
    k.set_conversation_id(key);
    k.set_turn(1);
    auto version = worker::BuildStoredVersion(k, "synthetic", "", kv);
    if (!version.ok()) return version.status();
    return client_->Write(version->manifest, std::move(version->blocks), absl::Now() + kDeadline);
  }

  absl::StatusOr<std::unique_ptr<KvSource>> Open(const std::string& key,
                                                 const std::vector<LoadStep>& loads) override {
    // The restore path of the worker: look the version up, then read the
    // blocks the plan loads in one streamed read started by the first
    // fetch.
    auto manifest = client_->LookupLatest(kTenant, key, absl::Now() + kDeadline);
    if (!manifest.ok()) return manifest.status();
    return worker::MakeStoreKvSource(client_.get(), *manifest, shape_, kDeadline,
                                     worker::BlocksForLoads(*manifest, loads));
  }

  absl::Status Erase(const std::string& key) override {
    return client_->Delete(kTenant, key, absl::Now() + kDeadline);
  }

 private:
  static constexpr absl::Duration kDeadline = absl::Seconds(60);
  static constexpr const char* kTenant = "bench";

  KvstoreBenchStore(const KvShape& shape, bool tcp, std::unique_ptr<kvstore::KvStoreServer> server,
                    std::unique_ptr<worker::ConversationStore> client)
      : shape_(shape), tcp_(tcp), server_(std::move(server)), client_(std::move(client)) {}

  const KvShape shape_;
  const bool tcp_;
  std::unique_ptr<kvstore::KvStoreServer> server_;
  std::unique_ptr<worker::ConversationStore> client_;
};

#endif  // KRUL_BENCH_WITH_KVSTORE

}  // namespace

std::unique_ptr<BenchStore> NewInProcessBenchStore() {
  auto store = InProcessKvStore::Create();
  // An empty link always validates.
  return std::make_unique<InProcessBenchStore>(*std::move(store));
}

absl::StatusOr<std::unique_ptr<BenchStore>> StartKvstoreBenchStore(const KvShape& shape, bool tcp,
                                                                   uint64_t capacity_bytes) {
#ifdef KRUL_BENCH_WITH_KVSTORE
  return KvstoreBenchStore::Start(shape, tcp, capacity_bytes);
#else
  (void)shape;
  (void)tcp;
  (void)capacity_bytes;
  return absl::UnimplementedError(
      "this build has no kvstore (KRUL_ENGINE_ONLY): use the in-process store");
#endif
}

}  // namespace krul::bench
