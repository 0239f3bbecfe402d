// Conversation ids scoped per API tenant: the id a conversation is stored
// under (in the in-process store or the kvstore) is derived from the tenant
// that asked (its API key, server/api_keys.h) and the id it named, so a
// tenant that names another's conversation id, or sends another's messages
// (digest ids), reaches an object of its own namespace: it can neither
// invalidate the other's cache nor learn whether the id exists.
//
// Stored ids:   tenant ""      -> id                   (no API keys: one tenant)
//               tenant "alice" -> "t:alice/" + id
// where id is "c:<conversation_id>" or "h:<digest>" (session.cc). Tenant
// names hold no '/' and unscoped ids never start with "t:", so two
// (tenant, id) pairs never give one stored id.
//
// Pure functions; thread-safe.
#ifndef KRUL_SERVICES_WORKER_SESSION_TENANT_SCOPE_H_
#define KRUL_SERVICES_WORKER_SESSION_TENANT_SCOPE_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace krul::worker {

// Longest API tenant name: with the 256-byte conversation ids the API takes,
// a scoped id stays far below the kvstore's 512-byte limit.
inline constexpr size_t kMaxApiTenantBytes = 64;

// OK when `tenant` may name an API tenant: 1..kMaxApiTenantBytes of
// [A-Za-z0-9._@-]. INVALID_ARGUMENT saying why otherwise.
absl::Status ValidateApiTenant(std::string_view tenant);

// The stored id of `tenant`'s conversation `id` (see above). `tenant` is
// empty or passes ValidateApiTenant.
std::string TenantScopedId(std::string_view tenant, std::string_view id);

}  // namespace krul::worker

#endif  // KRUL_SERVICES_WORKER_SESSION_TENANT_SCOPE_H_
