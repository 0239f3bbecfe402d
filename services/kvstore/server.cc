#include "kvstore/server.h"

#include <prometheus/exposer.h>

#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "krul/base/log.h"
#include "krul/base/status_macros.h"

namespace krul::kvstore {

absl::StatusOr<std::unique_ptr<KvStoreServer>> KvStoreServer::Start(
    const ServerOptions& options, std::unique_ptr<Transport> transport, Clock* clock) {
  KRUL_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<KvStoreServer> server(new KvStoreServer());
  server->options_ = options;
  server->clock_ = clock;
  server->metrics_ = std::make_unique<KvStoreMetrics>();
  server->transport_ = std::move(transport);
  if (server->transport_ != nullptr) {
    // Blocks live in transport-allocated memory so UCX peers on this host
    // read them with one memcpy; heap is the fallback beyond this cap.
    server->arena_ = std::make_unique<TransportArena>(
        server->transport_.get(),
        options.store.dram_capacity_bytes + options.store.max_staging_bytes);
  }
  absl::StatusOr<std::unique_ptr<Store>> store =
      Store::Open(options.store, clock, server->metrics_.get(), server->arena_.get());
  if (!store.ok()) return store.status();
  server->store_ = *std::move(store);

  ServiceOptions so;
  so.max_inline_bytes = options.max_inline_bytes;
  so.chunk_bytes = options.chunk_bytes;
  so.grant_scope = options.ucx_grant_scope;
  server->service_ =
      std::make_unique<KvStoreService>(server->store_.get(), clock, server->metrics_.get(),
                                       server->transport_.get(), so, server->arena_.get());

  grpc::ServerBuilder builder;
  std::string addr = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), &server->port_);
  builder.RegisterService(server->service_.get());
  // Inline Get/Put carry up to max_inline_bytes of blocks plus a manifest;
  // anything larger is refused by gRPC itself (RESOURCE_EXHAUSTED).
  const int max_message = static_cast<int>(std::max(options.max_inline_bytes, options.chunk_bytes) +
                                           (uint64_t{1} << 20));
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", addr));
  }

  if (options.metrics_port >= 0) {
    std::string maddr = absl::StrCat(options.host, ":", options.metrics_port);
    try {
      server->exposer_ = std::make_unique<prometheus::Exposer>(maddr);
    } catch (const std::exception& e) {
      server->server_->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("cannot serve /metrics on ", maddr, ": ", e.what()));
    }
    server->exposer_->RegisterCollectable(server->metrics_->registry());
    std::vector<int> ports = server->exposer_->GetListeningPorts();
    server->metrics_port_ = ports.empty() ? -1 : ports.front();
  }
  server->maintenance_ = std::thread([s = server.get()] { s->MaintenanceLoop(); });
  return server;
}

KvStoreServer::~KvStoreServer() {
  if (absl::Status s = Shutdown(); !s.ok()) KRUL_LOG(ERROR) << "kvstore: shutdown: " << s;
}

std::string KvStoreServer::address() const { return absl::StrCat(options_.host, ":", port_); }

void KvStoreServer::MaintenanceLoop() {
  while (!stop_.WaitForNotificationWithTimeout(options_.maintenance_interval)) {
    store_->RunMaintenance();
    service_->ExpireGrants();
  }
}

absl::Status KvStoreServer::Shutdown() {
  if (shut_down_) return absl::OkStatus();
  shut_down_ = true;
  // Start() may have failed half way: every member may be missing.
  if (store_ != nullptr) store_->BeginDrain();
  if (service_ != nullptr) service_->SetDraining();
  if (store_ != nullptr && server_ != nullptr) {
    size_t open = store_->WaitForOpenPuts(options_.shutdown_grace);
    if (open > 0) {
      KRUL_LOG(WARNING) << "kvstore: " << open << " puts still open after the grace period; "
                        << "they are dropped (never visible)";
    }
  }
  if (server_ != nullptr) {
    // Let RPCs already running (reads, commits) finish. gRPC's own
    // deadline then only needs to cover sending their responses: it would
    // otherwise also wait for idle client connections to go away.
    if (service_ != nullptr && !service_->WaitForIdle(absl::Seconds(5))) {
      KRUL_LOG(WARNING) << "kvstore: RPCs still running at shutdown are cancelled";
    }
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(250));
    server_->Wait();
  }
  stop_.Notify();
  if (maintenance_.joinable()) maintenance_.join();
  exposer_.reset();
  absl::Status flushed = store_ != nullptr ? store_->Flush() : absl::OkStatus();
  service_.reset();  // Deregisters UCX regions before the transport goes.
  store_.reset();    // Closes RocksDB.
  arena_.reset();
  transport_.reset();
  return flushed;
}

}  // namespace krul::kvstore
