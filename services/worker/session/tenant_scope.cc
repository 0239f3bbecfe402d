#include "worker/session/tenant_scope.h"

#include "absl/strings/str_cat.h"
#include "worker/api/string_view_conversion.h"

namespace krul::worker {

absl::Status ValidateApiTenant(std::string_view tenant) {
  if (tenant.empty() || tenant.size() > kMaxApiTenantBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("tenant names have 1..", kMaxApiTenantBytes, " characters"));
  }
  for (char c : tenant) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '@' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          "worker tenant names are made of letters, digits and . _ @ - only");
    }
  }
  return absl::OkStatus();
}

std::string TenantScopedId(std::string_view tenant, std::string_view id) {
  if (tenant.empty()) return std::string(id);
  return absl::StrCat("t:", ToAbslStringView(tenant), "/", ToAbslStringView(id));
}

}  // namespace krul::worker
