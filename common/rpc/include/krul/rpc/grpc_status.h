// The one mapping between absl::Status and grpc::Status, used at every gRPC
// edge (the kvstore service, the worker's gRPC service, the kvstore client).
//
// absl::StatusCode and grpc::StatusCode are the same canonical codes with the
// same numbers (OK = 0 ... UNAUTHENTICATED = 16), so a status crosses the
// wire and comes back with its code and message unchanged. A code outside
// that range (never produced by Krul) becomes UNKNOWN, keeping the message.
// Status payloads and gRPC error details are not carried.
//
// Pure functions; thread-safe.
#ifndef KRUL_RPC_GRPC_STATUS_H_
#define KRUL_RPC_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace krul {

// grpc::Status::OK for an OK status, otherwise the same code and message.
grpc::Status ToGrpcStatus(const absl::Status& status);

// absl::OkStatus() for an OK status, otherwise the same code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace krul

#endif  // KRUL_RPC_GRPC_STATUS_H_
