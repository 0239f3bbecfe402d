#include "worker/server/api_keys.h"

#include <utility>

#include "krul/base/log.h"
#include "worker/api/string_view_conversion.h"
#include "worker/session/tenant_scope.h"

namespace krul::worker {

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::FromFile(const std::string& path,
                                                           absl::Duration reload_interval) {
  absl::StatusOr<std::unique_ptr<rpc::TokenTable>> table = rpc::TokenTable::FromFile(
      path, "api_keys_file",
      [](absl::string_view tenant) { return ValidateApiTenant(ToStdStringView(tenant)); });
  if (!table.ok()) return table.status();
  return std::unique_ptr<ApiKeys>(new ApiKeys(*std::move(table), reload_interval));
}

absl::StatusOr<std::string> ApiKeys::Authenticate(const absl::string_view* authorization) const {
  {
    // One request per interval looks at the file (a stat; a read when it
    // changed); the others go on with the table they find.
    const absl::Time now = absl::Now();
    bool reload = false;
    if (reload_mu_.TryLock()) {
      if (now >= next_reload_) {
        next_reload_ = now + reload_interval_;
        reload = true;
      }
      reload_mu_.Unlock();
    }
    if (reload) {
      if (absl::Status s = table_->Reload(); !s.ok()) KRUL_LOG(ERROR) << "krul-worker: " << s;
    }
  }
  if (authorization == nullptr) {
    return absl::UnauthenticatedError(
        "You didn't provide an API key: send it as 'Authorization: Bearer <key>'");
  }
  absl::StatusOr<std::string> tenant = table_->LookupHeader(authorization);
  if (!tenant.ok()) {
    return absl::UnauthenticatedError(
        "Incorrect API key provided (send 'Authorization: Bearer <key>' with a key of this "
        "worker's --api_keys_file)");
  }
  return tenant;
}

}  // namespace krul::worker
