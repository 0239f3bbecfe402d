// KvStoreServer: one running KV store: the Store, its gRPC service, the
// Prometheus exposer, the optional UCX transport and a maintenance thread.
// main.cc builds one from flags; tests and benchmarks build one in-process.
//
// Safe defaults: the gRPC listener is TLS when certificates are given
// (mutual TLS with a client CA), and callers authenticate with bearer tokens
// when a tokens file is given. Without certificates, or without tokens, the
// server starts only on a loopback host unless allow_insecure is set, and
// logs a warning either way (see krul/rpc/credentials.h).
//
// Thread-safe: Shutdown may be called from any thread (once).
#ifndef KRUL_SERVICES_KVSTORE_SERVER_H_
#define KRUL_SERVICES_KVSTORE_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "krul/base/clock.h"
#include "krul/transport/transport.h"
#include "kvstore/metrics.h"
#include "kvstore/options.h"
#include "kvstore/service.h"
#include "kvstore/storage/store.h"
#include "kvstore/storage/transport_arena.h"
#include "kvstore/tenant_auth.h"

namespace prometheus {
class Exposer;
}

namespace krul::kvstore {

class KvStoreServer {
 public:
  // Validates `options`, opens the store, binds gRPC (and /metrics unless
  // metrics_port is -1) and starts serving. `transport` (may be null)
  // enables the UCX data plane; the server owns it. `clock` is not owned.
  // INVALID_ARGUMENT bad options; FAILED_PRECONDITION plaintext or the
  // trusting mode on a non-loopback host without allow_insecure; NOT_FOUND /
  // FAILED_PRECONDITION unreadable certificate or tokens files; UNAVAILABLE a
  // port cannot be bound or RocksDB cannot be opened. A corrupt RocksDB is
  // recovered at open (see Store::Open), not an error.
  static absl::StatusOr<std::unique_ptr<KvStoreServer>> Start(
      const ServerOptions& options, std::unique_ptr<Transport> transport = nullptr,
      Clock* clock = Clock::Real());

  // Shuts down (if not done) and releases everything.
  ~KvStoreServer();

  // The bound gRPC port and /metrics port (-1 when disabled).
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const;

  // Graceful shutdown: refuse new puts, give open puts up to
  // shutdown_grace to commit, finish in-flight RPCs, flush write-back data
  // and RocksDB, close. Returns the first error met while flushing.
  absl::Status Shutdown();

  Store* store() { return store_.get(); }
  KvStoreMetrics* metrics() { return metrics_.get(); }

 private:
  KvStoreServer() = default;
  void MaintenanceLoop();

  ServerOptions options_;
  Clock* clock_ = nullptr;
  std::unique_ptr<KvStoreMetrics> metrics_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<TransportArena> arena_;  // With a transport only.
  std::unique_ptr<TenantAuth> auth_;
  std::unique_ptr<KvStoreService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
  int metrics_port_ = -1;
  absl::Notification stop_;
  std::thread maintenance_;
  bool shut_down_ = false;
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_SERVER_H_
