// TokenTable: bearer tokens -> the tenant (or other principal) each names,
// from a file that holds only SHA-256 hashes, so a copy of it grants nothing.
// The kvstore's --tenant_tokens_file and the worker's --api_keys_file are
// this one format:
//
//   # comment ('#' to the end of the line); blank lines are skipped
//   alice:<64 hex digits: sha256 of alice's token>
//   alice:<sha256 of alice's next token>       (rotation)
//   bob:<sha256 of bob's token>
//
// one `tenant:sha256hex` per line; several tokens may name one tenant.
// Make a line with
//
//   krul-kvstore hash-token TENANT < token-file     (or)
//   printf %s "$TOKEN" | sha256sum                  (then "TENANT:<hex>")
//
// The file is re-read when it changes (Reload: the owner calls it
// periodically), so adding or revoking a token needs no restart; a new
// version that is unreadable or malformed is refused and the previous table
// kept.
//
// Thread-safe.
#ifndef KRUL_RPC_TOKEN_TABLE_H_
#define KRUL_RPC_TOKEN_TABLE_H_

#include <sys/types.h>

#include <ctime>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace krul::rpc {

// A further rule for tenant names (e.g. the worker's character set); null:
// any non-empty name. Returns INVALID_ARGUMENT with the reason.
using TenantCheck = std::function<absl::Status(absl::string_view tenant)>;

// SHA-256 hex -> tenant, parsed from the format above. INVALID_ARGUMENT
// naming the line when a line is malformed (no ':', an empty tenant, not 64
// hex digits: a token stored in clear), a hash is listed twice or `check`
// refuses the tenant.
absl::StatusOr<absl::flat_hash_map<std::string, std::string>> ParseTokenTable(
    absl::string_view text, const TenantCheck& check = nullptr);

class TokenTable {
 public:
  // The table in `path`. `flag` names the file in messages (e.g.
  // "tenant_tokens_file"); `check` applies to every version read. NOT_FOUND /
  // FAILED_PRECONDITION when it cannot be read, INVALID_ARGUMENT when
  // malformed or when it names no tenant.
  static absl::StatusOr<std::unique_ptr<TokenTable>> FromFile(std::string path, std::string flag,
                                                              TenantCheck check = nullptr);

  // The tenant `token` names. UNAUTHENTICATED when the table has no such
  // token (the message never repeats the token).
  absl::StatusOr<std::string> Lookup(absl::string_view token) const;

  // The tenant of an `authorization` header value "Bearer <token>" (null:
  // the header is absent). UNAUTHENTICATED when absent, malformed or
  // unknown.
  absl::StatusOr<std::string> LookupHeader(const absl::string_view* authorization) const;

  // Re-reads the file when its modification time or size changed. A file
  // that has become unreadable or malformed keeps the previous table (the
  // error is returned once per version, for the caller to log). OK when
  // unchanged or reloaded.
  absl::Status Reload();

  // Number of tokens in the table.
  size_t size() const;
  const std::string& path() const { return path_; }

 private:
  TokenTable(std::string path, std::string flag, TenantCheck check)
      : path_(std::move(path)), flag_(std::move(flag)), check_(std::move(check)) {}

  const std::string path_;
  const std::string flag_;
  const TenantCheck check_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::string> tenants_by_hash_ ABSL_GUARDED_BY(mu_);
  std::timespec mtime_ ABSL_GUARDED_BY(mu_) = {};
  off_t size_ ABSL_GUARDED_BY(mu_) = -1;
};

}  // namespace krul::rpc

#endif  // KRUL_RPC_TOKEN_TABLE_H_
