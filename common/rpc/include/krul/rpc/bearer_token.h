// Bearer tokens on the gRPC control plane: every call of a client carries
// the metadata `authorization: Bearer <token>`; the server hashes the token
// (SHA-256) and looks the hash up in its tenant table (the kvstore's
// --tenant_tokens_file holds only hashes, so a copy of that file grants
// nothing).
//
// Tokens are printable ASCII without spaces (gRPC metadata values), 16 to
// 4096 characters; `openssl rand -hex 32` makes a good one.
//
// Pure functions apart from ReadTokenFile; thread-safe.
#ifndef KRUL_RPC_BEARER_TOKEN_H_
#define KRUL_RPC_BEARER_TOKEN_H_

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace krul::rpc {

// The metadata key (gRPC keys are lower case).
inline constexpr char kAuthorizationKey[] = "authorization";

// Lower-case hex SHA-256 of `data` (64 characters), as `sha256sum` prints it.
std::string Sha256Hex(absl::string_view data);

// INVALID_ARGUMENT unless `token` is 16..4096 printable ASCII characters
// without spaces.
absl::Status ValidateToken(absl::string_view token);

// The token stored in `path`: its content with surrounding whitespace (a
// trailing newline) removed, validated. NOT_FOUND / FAILED_PRECONDITION when
// the file cannot be read, INVALID_ARGUMENT when the token is not valid.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// The token in an `authorization` metadata value "Bearer <token>" (scheme
// case-insensitive). UNAUTHENTICATED when the value has another form.
absl::StatusOr<absl::string_view> ParseBearer(absl::string_view value);

// A channel to `target` whose every call carries `authorization: Bearer
// <token>` (added by a client interceptor, so it works on TLS and, on
// loopback, on plaintext channels alike). An empty token: a plain channel.
std::shared_ptr<grpc::Channel> CreateChannelWithToken(
    const std::string& target, const std::shared_ptr<grpc::ChannelCredentials>& credentials,
    const grpc::ChannelArguments& args, const std::string& token);

}  // namespace krul::rpc

#endif  // KRUL_RPC_BEARER_TOKEN_H_
