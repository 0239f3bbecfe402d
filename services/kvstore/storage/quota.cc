#include "kvstore/storage/quota.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace krul::kvstore {

uint64_t QuotaTable::Limit(const std::string& tenant) const {
  auto it = limits_.find(tenant);
  return it == limits_.end() ? default_limit_ : it->second;
}

absl::Status QuotaTable::Reserve(const std::string& tenant, uint64_t bytes) {
  uint64_t limit = Limit(tenant);
  Usage& u = usage_[tenant];
  if (limit != 0) {
    uint64_t in_use = u.stored + u.reserved;
    if (in_use > limit || bytes > limit - in_use) {
      return absl::ResourceExhaustedError(
          absl::StrCat("tenant '", tenant, "' quota exceeded: ", u.stored, " stored + ", u.reserved,
                       " reserved + ", bytes, " requested > ", limit, " bytes"));
    }
  }
  u.reserved += bytes;
  return absl::OkStatus();
}

void QuotaTable::Unreserve(const std::string& tenant, uint64_t bytes) {
  Usage& u = usage_[tenant];
  u.reserved -= std::min(u.reserved, bytes);
}

void QuotaTable::Commit(const std::string& tenant, uint64_t reserved_bytes, uint64_t stored_bytes) {
  Usage& u = usage_[tenant];
  u.reserved -= std::min(u.reserved, reserved_bytes);
  u.stored += stored_bytes;
}

void QuotaTable::AddStored(const std::string& tenant, uint64_t bytes) {
  usage_[tenant].stored += bytes;
}

void QuotaTable::Release(const std::string& tenant, uint64_t bytes) {
  Usage& u = usage_[tenant];
  u.stored -= std::min(u.stored, bytes);
}

uint64_t QuotaTable::Stored(const std::string& tenant) const {
  auto it = usage_.find(tenant);
  return it == usage_.end() ? 0 : it->second.stored;
}

uint64_t QuotaTable::Reserved(const std::string& tenant) const {
  auto it = usage_.find(tenant);
  return it == usage_.end() ? 0 : it->second.reserved;
}

}  // namespace krul::kvstore
