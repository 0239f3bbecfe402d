// ApiKeys: who is calling the worker's HTTP API. With --api_keys_file every
// /v1 request must carry `Authorization: Bearer <key>` (as OpenAI clients
// send their API key); the key's SHA-256 names the tenant. The file is the
// kvstore's tokens format (krul/rpc/token_table.h): one `tenant:sha256hex`
// per line, only hashes, several keys per tenant allowed; make a line with
//
//   krul-kvstore hash-token TENANT < key-file
//
// Tenant names are ValidateApiTenant's (session/tenant_scope.h): the tenant
// scopes every conversation id the request names or implies.
//
// The file is re-read when it changed, looked at most once per
// `reload_interval` from Authenticate: adding or revoking a key needs no
// restart. A new version that is unreadable or malformed is refused (logged)
// and the previous keys kept.
//
// Thread-safe.
#ifndef KRUL_SERVICES_WORKER_SERVER_API_KEYS_H_
#define KRUL_SERVICES_WORKER_SERVER_API_KEYS_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "krul/rpc/token_table.h"

namespace krul::worker {

class ApiKeys {
 public:
  // The keys in `path`. NOT_FOUND / FAILED_PRECONDITION when it cannot be
  // read; INVALID_ARGUMENT when malformed, when a tenant name is not valid
  // or when it names no tenant.
  static absl::StatusOr<std::unique_ptr<ApiKeys>> FromFile(
      const std::string& path, absl::Duration reload_interval = absl::Seconds(1));

  // The tenant of an Authorization header value (null: no header).
  // UNAUTHENTICATED when the header is absent, not "Bearer <key>", or the key
  // is unknown; the message never repeats the key.
  absl::StatusOr<std::string> Authenticate(const absl::string_view* authorization) const;

  // Keys in the table.
  size_t size() const { return table_->size(); }

 private:
  ApiKeys(std::unique_ptr<rpc::TokenTable> table, absl::Duration reload_interval)
      : table_(std::move(table)), reload_interval_(reload_interval) {}

  const std::unique_ptr<rpc::TokenTable> table_;
  const absl::Duration reload_interval_;
  mutable absl::Mutex reload_mu_;
  mutable absl::Time next_reload_ ABSL_GUARDED_BY(reload_mu_) = absl::InfinitePast();
};

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SERVER_API_KEYS_H_
