// The gRPC `Worker` service (proto/krul/v1/worker.proto): the same chat
// turns as the HTTP API, for programmatic clients. Errors map one to one:
// the Status codes of WorkerCore::StartChat become gRPC codes.
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

namespace krul::worker {

// Converts a worker.proto request into the worker's ChatRequest, with the
// same validation as the HTTP API (INVALID_ARGUMENT naming the field).
absl::StatusOr<ChatRequest> ChatRequestFromProto(const v1::ChatRequest& request,
                                                 const WorkerOptions& options);

class WorkerGrpcService final : public v1::Worker::Service {
 public:
  explicit WorkerGrpcService(WorkerCore* core) : core_(core) {}

  grpc::Status Chat(grpc::ServerContext* context, const v1::ChatRequest* request,
                    v1::ChatResponse* response) override;
  grpc::Status ChatStream(grpc::ServerContext* context, const v1::ChatRequest* request,
                          grpc::ServerWriter<v1::ChatChunk>* writer) override;
  grpc::Status Models(grpc::ServerContext* context, const v1::ModelsRequest* request,
                      v1::ModelsResponse* response) override;

 private:
  WorkerCore* core_;
};

// A gRPC server running WorkerGrpcService.
class GrpcServer {
 public:
  // Listens on host:port (0 = ephemeral), with TLS when `tls` names a
  // certificate (mutual TLS with tls.client_ca_file). Plaintext is accepted
  // on a loopback host (with a warning) or with `allow_insecure`, else
  // FAILED_PRECONDITION (krul/rpc/credentials.h). NOT_FOUND /
  // FAILED_PRECONDITION for unreadable certificate files; UNAVAILABLE if it
  // cannot bind.
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(WorkerCore* core,
                                                           const std::string& host, int port,
                                                           const rpc::ServerTlsOptions& tls = {},
                                                           bool allow_insecure = false);
  int port() const { return port_; }
  void Stop();

 private:
  GrpcServer() = default;
  std::unique_ptr<WorkerGrpcService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SERVER_GRPC_SERVICE_H_
