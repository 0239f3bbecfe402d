// TenantAuth: who is calling the kvstore's control plane.
//
// With a tokens file (--tenant_tokens_file) every call must carry the
// metadata `authorization: Bearer <token>` (krul/rpc/bearer_token.h); the
// token's SHA-256 names the tenant. The file holds one `tenant:sha256hex`
// per line ('#' starts a comment, blank lines are skipped); several tokens
// may map to one tenant (rotation). Make a line with
//
//   krul-kvstore hash-token TENANT < token-file     (or)
//   printf %s "$TOKEN" | sha256sum                  (then "TENANT:<hex>")
//
// The file is re-read when it changes (Reload, from the server's maintenance
// loop): adding or revoking a token needs no restart.
//
// Without a tokens file the store runs in the old single-tenant trusting
// mode: calls need no token and the tenant is whatever the request names.
// The server allows that only on loopback (or with --insecure).
//
// Codes: UNAUTHENTICATED no token, a malformed header or an unknown token.
//
// Thread-safe.
#ifndef KRUL_SERVICES_KVSTORE_TENANT_AUTH_H_
#define KRUL_SERVICES_KVSTORE_TENANT_AUTH_H_

#include <grpcpp/server_context.h>

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "krul/rpc/token_table.h"

namespace krul::kvstore {

// The authenticated caller of one RPC.
struct Caller {
  // The tenant the credential names; empty in trusting mode.
  std::string tenant;
  // Trusting mode: no credential was checked; the request names the tenant.
  bool trusted = false;
};

// SHA-256 hex -> tenant, parsed from the tokens file format above (the
// shared format, rpc::ParseTokenTable). INVALID_ARGUMENT naming the line
// when a line is malformed (no ':', empty tenant, not 64 hex digits) or a
// hash is listed twice.
absl::StatusOr<absl::flat_hash_map<std::string, std::string>> ParseTenantTokens(
    absl::string_view text);

class TenantAuth {
 public:
  // Trusting mode: every caller is Caller{"", true}.
  static std::unique_ptr<TenantAuth> Trusting();

  // Token mode from `path`. NOT_FOUND / FAILED_PRECONDITION when it cannot be
  // read, INVALID_ARGUMENT when malformed or when it names no tenant.
  static absl::StatusOr<std::unique_ptr<TenantAuth>> FromFile(const std::string& path);

  bool trusting() const { return table_ == nullptr; }

  // The caller of the RPC behind `ctx` (its `authorization` metadata).
  absl::StatusOr<Caller> Authenticate(const grpc::ServerContext& ctx) const;
  // The same for a raw metadata value (null: the header is absent).
  absl::StatusOr<Caller> AuthenticateHeader(const absl::string_view* authorization) const;

  // Re-reads the file when its modification time or size changed. A file
  // that has become unreadable or malformed keeps the previous table (and
  // the error is returned so the caller can log it). OK when unchanged.
  absl::Status Reload();

  // Number of tokens in the table.
  size_t size() const;

 private:
  TenantAuth() = default;

  std::unique_ptr<rpc::TokenTable> table_;  // Null: trusting mode.
};

}  // namespace krul::kvstore

#endif  // KRUL_SERVICES_KVSTORE_TENANT_AUTH_H_
