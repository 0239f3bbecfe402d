// The gRPC `Worker` service (proto/krul/v1/worker.proto): the same chat
// turns as the HTTP API, for programmatic clients. Errors map one to one:
// the Status codes of WorkerCore::StartChat become gRPC codes. With API
// keys (api_keys.h) every call needs the metadata `authorization: Bearer
// <key>` (UNAUTHENTICATED otherwise), and the key's tenant scopes the
// conversation ids exactly as on HTTP: one tenant, one namespace, whichever
// front end it uses.
//
// Thread-safe.
#ifndef KRUL_SERVICES_WORKER_SERVER_GRPC_SERVICE_H_
#define KRUL_SERVICES_WORKER_SERVER_GRPC_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "krul/rpc/credentials.h"
#include "krul/v1/worker.grpc.pb.h"
#include "worker/core/worker_core.h"
#include "worker/server/api_keys.h"

namespace krul::worker {

// Converts a worker.proto request into the worker's ChatRequest, with the
// same validation as the HTTP API (INVALID_ARGUMENT naming the field).
absl::StatusOr<ChatRequest> ChatRequestFromProto(const v1::ChatRequest& request,
                                                 const WorkerOptions& options);

class WorkerGrpcService final : public v1::Worker::Service {
 public:
  // `api_keys` is borrowed (null: no keys, one tenant).
  explicit WorkerGrpcService(WorkerCore* core, const ApiKeys* api_keys = nullptr)
      : core_(core), api_keys_(api_keys) {}

  grpc::Status Chat(grpc::ServerContext* context, const v1::ChatRequest* request,
                    v1::ChatResponse* response) override;
  grpc::Status ChatStream(grpc::ServerContext* context, const v1::ChatRequest* request,
                          grpc::ServerWriter<v1::ChatChunk>* writer) override;
  grpc::Status Models(grpc::ServerContext* context, const v1::ModelsRequest* request,
                      v1::ModelsResponse* response) override;

 private:
  // The caller's tenant: "" without keys; UNAUTHENTICATED for a missing or
  // unknown key.
  absl::StatusOr<std::string> Tenant(const grpc::ServerContext& context) const;

  WorkerCore* core_;
  const ApiKeys* api_keys_;
};

// A gRPC server running WorkerGrpcService.
class GrpcServer {
 public:
  // Listens on host:port (0 = ephemeral), with TLS when `tls` names a
  // certificate (mutual TLS with tls.client_ca_file). Plaintext is accepted
  // on a loopback host (with a warning) or with `allow_insecure`, else
  // FAILED_PRECONDITION (krul/rpc/credentials.h). NOT_FOUND /
  // FAILED_PRECONDITION for unreadable certificate files; UNAVAILABLE if it
  // cannot bind. `api_keys` (owned; null: none) authenticate every call.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(
      WorkerCore* core, const std::string& host, int port, const rpc::ServerTlsOptions& tls = {},
      bool allow_insecure = false, std::unique_ptr<ApiKeys> api_keys = nullptr);
  int port() const { return port_; }
  void Stop();

 private:
  GrpcServer() = default;
  std::unique_ptr<ApiKeys> api_keys_;  // before the service that borrows them
  std::unique_ptr<WorkerGrpcService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SERVER_GRPC_SERVICE_H_
