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
  // Who may connect, and how, is settled before anything is opened.
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      rpc::MakeServerCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  if (!options.tls.enabled()) {
    absl::StatusOr<std::string> warning =
        rpc::CheckPlaintext("kvstore gRPC listener", options.host, options.allow_insecure);
    if (!warning.ok()) return warning.status();
    KRUL_LOG(WARNING) << "kvstore: " << *warning;
  }
  std::unique_ptr<TenantAuth> auth;
  if (!options.tenant_tokens_file.empty()) {
    absl::StatusOr<std::unique_ptr<TenantAuth>> loaded =
        TenantAuth::FromFile(options.tenant_tokens_file);
    if (!loaded.ok()) return loaded.status();
    auth = *std::move(loaded);
    KRUL_LOG(INFO) << "kvstore: " << auth->size() << " tenant tokens from "
                   << options.tenant_tokens_file << "; every call must carry one";
  } else {
    if (!rpc::IsLoopbackHost(options.host) && !options.allow_insecure) {
      return absl::FailedPreconditionError(absl::StrCat(
          "no --tenant_tokens_file: the single-tenant trusting mode (any caller may name any "
          "tenant) is accepted on a loopback host only; give tokens or pass --insecure"));
    }
    KRUL_LOG(WARNING) << "kvstore: no --tenant_tokens_file: callers are not authenticated and "
                         "may name any tenant (single-tenant trusting mode"
                      << (rpc::IsLoopbackHost(options.host) ? ", loopback only)"
                                                            : "; INSECURE on a network address)");
    auth = TenantAuth::Trusting();
  }
  std::unique_ptr<KvStoreServer> server(new KvStoreServer());
  server->auth_ = std::move(auth);
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
  server->service_ = std::make_unique<KvStoreService>(
      server->store_.get(), clock, server->metrics_.get(), server->transport_.get(), so,
      server->arena_.get(), server->auth_->trusting() ? nullptr : server->auth_.get());

  grpc::ServerBuilder builder;
  std::string addr = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(addr, *credentials, &server->port_);
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
    const std::string& mhost = options.metrics_host.empty() ? options.host : options.metrics_host;
    std::string maddr = absl::StrCat(mhost, ":", options.metrics_port);
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
    if (absl::Status s = auth_->Reload(); !s.ok()) KRUL_LOG(ERROR) << "kvstore: " << s.message();
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
